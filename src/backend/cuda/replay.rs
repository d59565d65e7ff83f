//! Replaying a repeated stretch of device work (a decode step) as one CUDA graph.
//!
//! A decode step is ~600 launches of small kernels and GEMMs at a few dozen rows. On an H100
//! the host's work per launch (~13.5 us measured, cuBLAS's the largest) bounded the step at
//! 8.3 ms while the GPU's own work is ~1-2 ms (docs/perf.md, "Fourth call"). A CUDA graph of
//! the step replays all of it with one launch.
//!
//! How, without the model code knowing: the caller brackets the stretch (`begin(tag)` ..
//! `end()`). The first time a tag is seen its work runs as usual and its fingerprint is kept:
//! per unit of work (a kernel launch, a library GEMM, a host->device write) a key of
//! everything that decides what the unit does (kernel, grid, every argument value and
//! address). The next time, the units are held instead of run, each compared with the kept
//! fingerprints as it comes; if the whole stretch matches one, that fingerprint's graph
//! (captured from the held units the first time it matched) is launched, the writes' new
//! bytes put first where the graph's copies read them. The first unit that matches no
//! fingerprint ends the deferral: the held units run in order, the rest of the stretch runs
//! live, and its fingerprint is kept too (up to `MAX_CANDIDATES` per tag, for steps that
//! alternate). A download inside the stretch runs the held units first and makes the tag
//! never replay (the host read a result mid-way; a graph would hand it stale data).
//!
//! Correctness rests on the key: equal keys do the same work. Addresses are in the key, so a
//! replay needs the allocator to hand out the same blocks as the captured step, which it does
//! when a step's allocations and frees repeat, as a decode step's do; a write's bytes are not
//! in the key (they are the step's inputs: token ids, positions, cache rows). Host-side
//! bookkeeping (allocation, the bf16 shadow registry) runs at call time in every mode; only
//! device work is deferred, and always run in program order. The emulator replays by running
//! the units kept from the capture (not the new ones), so a key that missed a parameter
//! shows up in CI as wrong results.
//!
//! Addresses repeat because each repeated shape allocates from a pool of its own
//! (`alloc::StretchPools`) whose free lists hand out the lowest address first; a shape's first
//! step runs as plain work (one-off shapes get no pool). `MMR1_REPLAY_DEBUG=1` prints the unit
//! where a step stopped matching and what the kept fingerprints had there.

use super::alloc::{Block, Pool, StretchPools};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A unit of device work, runnable on a stream of type `S` (the GPU's capture or main stream;
/// `()` on the emulator, which runs it at once).
pub(crate) type Run<S> = Arc<dyn Fn(&S) -> Result<(), String> + Send + Sync>;

/// One unit of a stretch.
pub(crate) enum Op<S> {
    /// A kernel launch or library call: `key` says everything it does.
    Work { key: Vec<u64>, run: Run<S> },
    /// Host bytes copied to device address `dst` (an upload): the bytes change per step.
    Write { dst: u64, bytes: Vec<u8> },
}

/// What a kept fingerprint holds per unit.
#[derive(Clone, PartialEq, Eq)]
enum Key {
    Work(Vec<u64>),
    Write { dst: u64, len: usize },
}

impl Key {
    fn dbg(&self) -> String {
        match self {
            Key::Work(v) => format!("{v:x?}"),
            Key::Write { dst, len } => format!("write {dst:x} {len}"),
        }
    }
}

impl<S> Op<S> {
    fn key(&self) -> Key {
        match self {
            Op::Work { key, .. } => Key::Work(key.clone()),
            Op::Write { dst, bytes } => Key::Write { dst: *dst, len: bytes.len() },
        }
    }
    fn matches(&self, k: &Key) -> bool {
        match (self, k) {
            (Op::Work { key, .. }, Key::Work(k)) => key == k,
            (Op::Write { dst, bytes }, Key::Write { dst: d, len }) => {
                dst == d && bytes.len() == *len
            }
            _ => false,
        }
    }
}

/// Kinds of work in a key's first word, so that no two kinds can share a key.
pub(crate) const KEY_KERNEL: u64 = 1;
pub(crate) const KEY_GEMM: u64 = 2;

/// Two key words per kernel argument: its type (a u32 5 is not an i32 5), its bits.
pub(crate) fn arg_word(kind: u8, bits: u64) -> [u64; 2] {
    [kind as u64, bits]
}

/// The key of a launch of kernel `id` (a handle or `name_word`) and its argument slots, from
/// `slots` (`Arg::slot` of each argument): kernel, grid, block, shared memory, every argument.
pub(crate) fn kernel_key(
    id: u64,
    grid: [u32; 3],
    block: [u32; 3],
    shared_bytes: u32,
    slots: impl Iterator<Item = (u8, u64)>,
) -> (Vec<u64>, Vec<u64>) {
    let mut key = vec![KEY_KERNEL, id];
    key.extend(grid.iter().chain(&block).map(|&g| g as u64));
    key.push(shared_bytes as u64);
    let vals = slots
        .map(|(kind, v)| {
            key.extend(arg_word(kind, v));
            v
        })
        .collect();
    (key, vals)
}

/// A stable 64-bit name for a kernel in a key (FNV-1a: the same on every run; the emulator's
/// kernels are named, the GPU's are handles).
#[cfg_attr(not(any(test, feature = "emu")), allow(dead_code))]
pub(crate) fn name_word(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// What a device does for the replay: run a unit now, copy bytes now, capture held units as a
/// graph, launch a captured graph.
pub(crate) trait GraphHost {
    type Stream;
    type Graph: Send;
    /// Runs `run` on the device's own stream now (outside any capture).
    fn run_now(&self, run: &Run<Self::Stream>) -> Result<(), String>;
    /// Copies `bytes` to device address `dst` now.
    fn write_now(&self, dst: u64, bytes: &[u8]);
    /// The graph of `ops` (nothing runs yet). Err leaves the device as it was.
    fn capture(&self, ops: &[Op<Self::Stream>]) -> Result<Self::Graph, String>;
    /// Runs `graph`, captured from units with the keys of `ops`, with `ops`' write bytes.
    fn launch(&self, graph: &mut Self::Graph, ops: &[Op<Self::Stream>]) -> Result<(), String>;
}

/// Fingerprints kept per tag: a decode step's allocations may cycle through a few states.
const MAX_CANDIDATES: usize = 4;

/// Counters since the device was made (`Backend::replay_stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplayStats {
    /// Stretches begun while replay was on.
    pub stretches: u64,
    /// Stretches run as one graph launch.
    pub replays: u64,
    /// Graphs captured (the first match of a fingerprint).
    pub captures: u64,
    /// Stretches whose units stopped matching part way (held units run, then live).
    pub fallbacks: u64,
    /// Units of work inside replayed graphs, in all.
    pub units_replayed: u64,
    /// Stretches with a graph at hand run op by op instead (`ReplayMode::Auto`: a trial step,
    /// or the graph measured slower).
    pub run_live: u64,
}

/// When a device replays repeated stretches as graphs (`MMR1_GRAPHS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayMode {
    /// Never: every unit runs as it comes.
    Off,
    /// Every stretch that matches a fingerprint (`MMR1_GRAPHS=1`; the emulator's default).
    Always,
    /// Where it pays (`MMR1_GRAPHS=auto`; the GPU's default): each tag with a graph alternates
    /// graph and op-by-op steps for a few steps, keeps the faster by the steps' wall time, and
    /// tries again now and then (`Trial`). A graph saves the host's launches but launches only
    /// when the host has built the whole step, so where the GPU's work is the bound (a decode
    /// step of hundreds of rows) op by op can be faster; measured both ways on an H100: a 64-row
    /// 0.5B decode step 4.82 -> 4.27 ms with graphs, a 256-row GRPO rollout 0.662 -> 0.739 s.
    Auto,
}

/// How one step of a tag ran, for `Trial`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    Graph,
    Live,
}

/// Steps of each way a trial times before it decides.
const TRIAL_EACH: usize = 4;
/// Steps run the chosen way before a tag is tried again (what is faster may change as its
/// sequences grow).
const RETRY_AFTER: usize = 256;

/// `ReplayMode::Auto`'s choice for one tag: graph and live steps alternate until each way has
/// `TRIAL_EACH` wall times; the way with the lower median wins (live on a tie) for
/// `RETRY_AFTER` steps, then the trial starts over.
#[derive(Default)]
struct Trial {
    graph: Vec<f64>,
    live: Vec<f64>,
    chosen: Option<Way>,
    since: usize,
}

impl Trial {
    /// The way the next step of the tag runs.
    fn next(&self) -> Way {
        match self.chosen {
            Some(w) => w,
            None if self.graph.len() <= self.live.len() => Way::Graph,
            None => Way::Live,
        }
    }

    /// A step of the tag that ran `way` took `secs` (from its start to the next step's).
    fn record(&mut self, way: Way, secs: f64) {
        if self.chosen.is_some() {
            self.since += 1;
            if self.since >= RETRY_AFTER {
                *self = Trial::default();
            }
            return;
        }
        match way {
            Way::Graph => self.graph.push(secs),
            Way::Live => self.live.push(secs),
        }
        if self.graph.len() >= TRIAL_EACH && self.live.len() >= TRIAL_EACH {
            let (g, l) = (median(&mut self.graph), median(&mut self.live));
            self.chosen = Some(if g < l { Way::Graph } else { Way::Live });
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// The last stretch begun (`ReplayMode::Auto` times a tag's steps from one start to the next).
struct Prev {
    tag: u64,
    at: f64,
    /// How it ran, if it was a step a trial counts (a graph launched without capturing, or a
    /// step run live by choice).
    way: Option<Way>,
}

struct Candidate<G> {
    keys: Vec<Key>,
    /// The addresses the stretch's allocations got, in order (a replay asks for them again).
    allocs: Vec<u64>,
    graph: Option<G>,
    last_used: u64,
}

struct Tag<G> {
    candidates: Vec<Candidate<G>>,
    /// A download happened inside a stretch of this tag, or capture failed: run it live.
    never: bool,
    trial: Trial,
}

impl<G> Default for Tag<G> {
    fn default() -> Self {
        Tag { candidates: Vec::new(), never: false, trial: Trial::default() }
    }
}

struct Open<S> {
    tag: u64,
    /// Units held (not yet run) while some fingerprint still matches.
    deferring: bool,
    held: Vec<Op<S>>,
    /// Indices of the tag's candidates that match every unit so far.
    alive: Vec<usize>,
    /// Keys of the units run live so far (the fingerprint this stretch leaves).
    keys: Vec<Key>,
    /// The addresses of the stretch's allocations so far.
    allocs: Vec<u64>,
    synced: bool,
    /// A graph is at hand but this step runs op by op (`ReplayMode::Auto`).
    live_by_choice: bool,
}

struct State<S, G> {
    open: Option<Open<S>>,
    tags: HashMap<u64, Tag<G>>,
    stats: ReplayStats,
    clock: u64,
    prev: Option<Prev>,
}

/// Seconds on a monotonic clock (`Replay`'s, replaceable in tests).
type Clock = Box<dyn Fn() -> f64 + Send + Sync>;

fn monotonic_secs() -> f64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64()
}

/// The replay state of one device.
pub(crate) struct Replay<S, G> {
    on: bool,
    /// `ReplayMode::Auto`: time graph and op-by-op steps per tag and keep the faster.
    auto: bool,
    clock: Clock,
    /// `MMR1_REPLAY_DEBUG` set: say on stderr where each step stopped matching.
    debug: bool,
    /// Whether a stretch is open (read without the lock on every launch).
    open: std::sync::atomic::AtomicBool,
    state: Mutex<State<S, G>>,
}

impl<S, G: Send> Replay<S, G> {
    /// Replay on (`ReplayMode::Always`) or off.
    pub(crate) fn new(on: bool) -> Self {
        Self::with_mode(if on { ReplayMode::Always } else { ReplayMode::Off })
    }

    pub(crate) fn with_mode(mode: ReplayMode) -> Self {
        Replay {
            on: mode != ReplayMode::Off,
            auto: mode == ReplayMode::Auto,
            clock: Box::new(monotonic_secs),
            debug: std::env::var_os("MMR1_REPLAY_DEBUG").is_some(),
            open: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(State {
                open: None,
                tags: HashMap::new(),
                stats: ReplayStats::default(),
                clock: 0,
                prev: None,
            }),
        }
    }

    /// The mode it was made with.
    #[cfg(test)]
    fn mode(&self) -> ReplayMode {
        match (self.on, self.auto) {
            (false, _) => ReplayMode::Off,
            (true, false) => ReplayMode::Always,
            (true, true) => ReplayMode::Auto,
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.on
    }

    pub(crate) fn stats(&self) -> ReplayStats {
        self.state.lock().expect("replay state").stats
    }

    /// Whether a stretch is open: units must then go through `submit` (outside one, a device
    /// may run its work directly without building units).
    pub(crate) fn in_stretch(&self) -> bool {
        self.on && self.open.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether units are being held (not run as they come): nothing has run yet, so a device
    /// must not wait for them (the GPU's per-launch check in debug builds) nor read or write
    /// device memory from the host at call time.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn deferring(&self) -> bool {
        self.on
            && self.state.lock().expect("replay state").open.as_ref().is_some_and(|o| o.deferring)
    }

    /// Starts a stretch of work that repeats under `tag`. Panics if one is open already.
    pub(crate) fn begin(&self, tag: u64) {
        if !self.on {
            return;
        }
        let mut st = self.state.lock().expect("replay state");
        assert!(
            st.open.is_none(),
            "replay stretches do not nest (tag {tag:#x} begun inside another)"
        );
        st.stats.stretches += 1;
        if self.auto {
            // The last step's wall time, from its start to this one's, counts for its tag's
            // trial if it was that tag's too (nothing else ran in between) and a way it times.
            let now = (self.clock)();
            if let Some(Prev { tag: p, at, way: Some(way) }) = st.prev.take() {
                if p == tag {
                    st.tags.entry(tag).or_default().trial.record(way, now - at);
                }
            }
            st.prev = Some(Prev { tag, at: now, way: None });
        }
        let t = st.tags.entry(tag).or_default();
        if t.never {
            return;
        }
        self.open.store(true, std::sync::atomic::Ordering::Relaxed);
        let alive: Vec<usize> = (0..t.candidates.len()).collect();
        let live = self.auto
            && t.candidates.iter().any(|c| c.graph.is_some())
            && t.trial.next() == Way::Live;
        st.open = Some(Open {
            tag,
            deferring: !alive.is_empty() && !live,
            held: Vec::new(),
            alive,
            keys: Vec::new(),
            allocs: Vec::new(),
            synced: false,
            live_by_choice: live,
        });
    }

    /// `Device::replay_begin` of a device whose main pool is `pool` and whose repeated shapes
    /// allocate from `stretch`: a shape's first step runs as plain work; its repeats get a pool
    /// of their own, start with the last step's activation shadows freed from it (the step
    /// writes those activations again before reading them) and are recorded, then replayed.
    /// Nothing without the caching allocator: blocks would go back at once, so a held unit
    /// could outlive its memory and no step's addresses would repeat.
    pub(crate) fn begin_in<R: Block>(&self, tag: u64, stretch: &StretchPools<R>, pool: &Pool<R>) {
        if !self.on || !pool.caching() || !stretch.enter(tag) {
            return;
        }
        if let Some(zone) = stretch.current() {
            pool.shadow_forget_from(&zone);
        }
        self.begin(tag);
    }

    /// `Device::replay_end`: the stretch's pool closes, the stretch ends (see `end`).
    pub(crate) fn end_in<H: GraphHost<Stream = S, Graph = G>, R: Block>(
        &self,
        host: &H,
        stretch: &StretchPools<R>,
    ) {
        stretch.leave();
        self.end(host).unwrap_or_else(|e| panic!("{e}"));
    }

    /// The addresses the next allocation should get, most wanted first: what it got in the
    /// fingerprints that still match (empty outside a held stretch).
    pub(crate) fn preferred_alloc(&self) -> Vec<u64> {
        if !self.in_stretch() {
            return Vec::new(); // no lock on the allocation path outside a stretch
        }
        let st = self.state.lock().expect("replay state");
        let Some(open) = st.open.as_ref().filter(|o| o.deferring) else { return Vec::new() };
        let cands = &st.tags[&open.tag].candidates;
        let j = open.allocs.len();
        open.alive.iter().filter_map(|&c| cands[c].allocs.get(j).copied()).collect()
    }

    /// Notes the address an allocation inside the open stretch got.
    pub(crate) fn note_alloc(&self, addr: u64) {
        if !self.in_stretch() {
            return;
        }
        if let Some(open) = self.state.lock().expect("replay state").open.as_mut() {
            open.allocs.push(addr);
        }
    }

    /// One unit of work: run now, or held while a fingerprint matches.
    pub(crate) fn submit<H: GraphHost<Stream = S, Graph = G>>(
        &self,
        host: &H,
        op: Op<S>,
    ) -> Result<(), String> {
        if !self.on {
            return run_op(host, &op);
        }
        let mut guard = self.state.lock().expect("replay state");
        let st = &mut *guard;
        let Some(open) = st.open.as_mut() else {
            drop(guard);
            return run_op(host, &op);
        };
        if open.deferring {
            let i = open.held.len();
            let cands = &st.tags[&open.tag].candidates;
            if self.debug {
                explain_fallback(cands, &open.alive, i, &op);
            }
            open.alive.retain(|&c| cands[c].keys.get(i).is_some_and(|k| op.matches(k)));
            open.held.push(op);
            if open.alive.is_empty() {
                st.stats.fallbacks += 1;
                return stop_deferring(host, open);
            }
            return Ok(());
        }
        if !open.live_by_choice {
            open.keys.push(op.key());
        }
        run_op(host, &op)
    }

    /// Copies `bytes` to device address `dst`: at once outside a stretch (no copy of the
    /// bytes: uploads of weights are large), else as a unit (the step's bytes are kept).
    pub(crate) fn submit_write<H: GraphHost<Stream = S, Graph = G>>(
        &self,
        host: &H,
        dst: u64,
        bytes: &[u8],
    ) -> Result<(), String> {
        if !self.in_stretch() {
            host.write_now(dst, bytes);
            return Ok(());
        }
        self.submit(host, Op::Write { dst, bytes: bytes.to_vec() })
    }

    /// The host is about to read device memory (a download, a synchronize): held units run
    /// first, and the open stretch's tag will never replay.
    pub(crate) fn flush<H: GraphHost<Stream = S, Graph = G>>(
        &self,
        host: &H,
    ) -> Result<(), String> {
        if !self.on {
            return Ok(());
        }
        let mut st = self.state.lock().expect("replay state");
        let Some(open) = st.open.as_mut() else { return Ok(()) };
        open.synced = true;
        if open.deferring {
            return stop_deferring(host, open);
        }
        Ok(())
    }

    /// Ends the open stretch: launches its graph if it matched a fingerprint whole, else keeps
    /// its fingerprint. A no-op without an open stretch.
    pub(crate) fn end<H: GraphHost<Stream = S, Graph = G>>(&self, host: &H) -> Result<(), String> {
        if !self.on {
            return Ok(());
        }
        let mut guard = self.state.lock().expect("replay state");
        let st = &mut *guard;
        let Some(mut open) = st.open.take() else { return Ok(()) };
        self.open.store(false, std::sync::atomic::Ordering::Relaxed);
        st.clock += 1;
        let clock = st.clock;
        let tag = st.tags.get_mut(&open.tag).expect("the open tag exists");
        if open.synced {
            tag.never = true;
            tag.candidates.clear();
            return Ok(());
        }
        if open.live_by_choice {
            // Its units ran as they came; its fingerprint is one the tag has already.
            st.stats.run_live += 1;
            if let Some(p) = st.prev.as_mut() {
                p.way = Some(Way::Live);
            }
            return Ok(());
        }
        if open.deferring {
            let n = open.held.len();
            open.alive.retain(|&c| tag.candidates[c].keys.len() == n);
            if let Some(&c) = open.alive.first() {
                let cand = &mut tag.candidates[c];
                cand.last_used = clock;
                if cand.graph.is_some() {
                    // A replay without a capture: a step a trial times.
                    if let Some(p) = st.prev.as_mut() {
                        p.way = Some(Way::Graph);
                    }
                } else {
                    match host.capture(&open.held) {
                        Ok(g) => {
                            cand.graph = Some(g);
                            st.stats.captures += 1;
                        }
                        Err(e) => {
                            eprintln!("warning: a CUDA graph of a repeated step could not be captured ({e}); running it op by op");
                            tag.never = true;
                            tag.candidates.clear();
                            return run_all(host, &open.held);
                        }
                    }
                }
                host.launch(cand.graph.as_mut().expect("captured above"), &open.held)?;
                st.stats.replays += 1;
                st.stats.units_replayed += n as u64;
                return Ok(());
            }
            // A prefix of every fingerprint: run it, and keep it as one more.
            st.stats.fallbacks += 1;
            stop_deferring(host, &mut open)?;
        }
        if tag.candidates.len() >= MAX_CANDIDATES {
            let oldest = (0..tag.candidates.len())
                .min_by_key(|&i| tag.candidates[i].last_used)
                .expect("full");
            tag.candidates.remove(oldest);
        }
        tag.candidates.push(Candidate {
            keys: open.keys,
            allocs: open.allocs,
            graph: None,
            last_used: clock,
        });
        Ok(())
    }
}

/// `MMR1_REPLAY_DEBUG`: when unit `i` matches none of the candidates still alive, what each
/// had there (diagnostics only).
fn explain_fallback<S, G>(cands: &[Candidate<G>], alive: &[usize], i: usize, op: &Op<S>) {
    if alive.iter().any(|&c| cands[c].keys.get(i).is_some_and(|k| op.matches(k))) {
        return;
    }
    for &c in alive {
        let want = cands[c].keys.get(i).map(Key::dbg);
        eprintln!(
            "replay: step stopped matching at unit {i} (fingerprint {c}): got {} want {want:?}",
            op.key().dbg()
        );
    }
}

fn run_op<H: GraphHost>(host: &H, op: &Op<H::Stream>) -> Result<(), String> {
    match op {
        Op::Work { run, .. } => host.run_now(run),
        Op::Write { dst, bytes } => {
            host.write_now(*dst, bytes);
            Ok(())
        }
    }
}

fn run_all<H: GraphHost>(host: &H, ops: &[Op<H::Stream>]) -> Result<(), String> {
    ops.iter().try_for_each(|op| run_op(host, op))
}

/// Runs the held units in order and goes on live, their keys the start of the fingerprint.
fn stop_deferring<H: GraphHost>(host: &H, open: &mut Open<H::Stream>) -> Result<(), String> {
    open.deferring = false;
    let held = std::mem::take(&mut open.held);
    open.keys = held.iter().map(Op::key).collect();
    run_all(host, &held)
}

/// The replay mode from `MMR1_GRAPHS` (`1`: always, `0`: off, `auto`: where it measures
/// faster; unset: `default`). Panics on another value, naming it.
pub(crate) fn mode_from_env(default: ReplayMode) -> ReplayMode {
    mode_value(std::env::var("MMR1_GRAPHS").ok().as_deref(), default)
}

fn mode_value(v: Option<&str>, default: ReplayMode) -> ReplayMode {
    match v {
        None | Some("") => default,
        Some("1") => ReplayMode::Always,
        Some("0") => ReplayMode::Off,
        Some("auto") => ReplayMode::Auto,
        Some(v) => panic!(
            "MMR1_GRAPHS={v:?}: expected 1 (replay repeated decode steps as CUDA graphs), 0 or auto"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A device that logs what runs: units by name, writes by (dst, first byte), graph
    /// launches by the names of the units they were captured from.
    #[derive(Default)]
    struct Log {
        ran: RefCell<Vec<String>>,
        fail_capture: bool,
    }

    impl GraphHost for Log {
        type Stream = RefCell<Vec<String>>;
        type Graph = Vec<Option<Run<Self::Stream>>>;
        fn run_now(&self, run: &Run<Self::Stream>) -> Result<(), String> {
            run(&self.ran)
        }
        fn write_now(&self, dst: u64, bytes: &[u8]) {
            self.ran.borrow_mut().push(format!("w{dst}={}", bytes[0]));
        }
        fn capture(&self, ops: &[Op<Self::Stream>]) -> Result<Self::Graph, String> {
            if self.fail_capture {
                return Err("no".into());
            }
            self.ran.borrow_mut().push("capture".into());
            Ok(ops
                .iter()
                .map(|o| match o {
                    Op::Work { run, .. } => Some(run.clone()),
                    Op::Write { .. } => None,
                })
                .collect())
        }
        fn launch(&self, g: &mut Self::Graph, ops: &[Op<Self::Stream>]) -> Result<(), String> {
            self.ran.borrow_mut().push("graph".into());
            for (u, op) in g.iter().zip(ops) {
                match (u, op) {
                    (Some(run), _) => run(&self.ran)?,
                    (None, Op::Write { dst, bytes }) => self.write_now(*dst, bytes),
                    _ => return Err("graph and units disagree".into()),
                }
            }
            Ok(())
        }
    }

    // The logging stream is not Sync, so units are made per test thread (Run needs Send +
    // Sync only for the real devices' threads).
    struct Unsync<T>(T);
    unsafe impl<T> Send for Unsync<T> {}
    unsafe impl<T> Sync for Unsync<T> {}

    fn work(name: &str, arg: u64) -> Op<RefCell<Vec<String>>> {
        let label = Unsync(format!("{name}({arg})"));
        Op::Work {
            key: vec![KEY_KERNEL, name_word(name), arg],
            run: Arc::new(move |log: &RefCell<Vec<String>>| {
                log.borrow_mut().push(label.0.clone());
                Ok(())
            }),
        }
    }

    fn write(dst: u64, byte: u8) -> Op<RefCell<Vec<String>>> {
        Op::Write { dst, bytes: vec![byte, 0, 0] }
    }

    type R = Replay<RefCell<Vec<String>>, Vec<Option<Run<RefCell<Vec<String>>>>>>;

    fn step(r: &R, host: &Log, tag: u64, ops: Vec<Op<RefCell<Vec<String>>>>) -> Vec<String> {
        host.ran.borrow_mut().clear();
        r.begin(tag);
        for op in ops {
            r.submit(host, op).unwrap();
        }
        r.end(host).unwrap();
        host.ran.borrow().clone()
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_repeated_stretch_runs_live_then_is_captured_then_replayed_with_new_bytes() {
        let (r, host) = (R::new(true), Log::default());
        assert!(!r.in_stretch());
        r.begin(9);
        assert!(r.in_stretch(), "units must come through submit");
        r.end(&host).unwrap();
        assert!(!r.in_stretch());
        let ops = |b| vec![write(7, b), work("embed", 1), work("gemm", 2)];
        assert_eq!(step(&r, &host, 1, ops(10)), s(&["w7=10", "embed(1)", "gemm(2)"]));
        assert_eq!(
            step(&r, &host, 1, ops(11)),
            s(&["capture", "graph", "w7=11", "embed(1)", "gemm(2)"])
        );
        assert_eq!(step(&r, &host, 1, ops(12)), s(&["graph", "w7=12", "embed(1)", "gemm(2)"]));
        let st = r.stats();
        assert_eq!(
            (st.stretches, st.replays, st.captures, st.fallbacks, st.units_replayed),
            (4, 2, 1, 0, 6)
        );
    }

    #[test]
    fn a_unit_that_differs_runs_the_held_ones_in_order_then_goes_on_live() {
        let (r, host) = (R::new(true), Log::default());
        step(&r, &host, 1, vec![work("a", 1), work("b", 2), work("c", 3)]);
        // Differs at the second unit: `a` ran held, then the rest live, nothing skipped.
        assert_eq!(
            step(&r, &host, 1, vec![work("a", 1), work("b", 9), work("c", 3)]),
            s(&["a(1)", "b(9)", "c(3)"])
        );
        assert_eq!(r.stats().fallbacks, 1);
        // Both fingerprints are kept: either one replays now.
        assert_eq!(
            step(&r, &host, 1, vec![work("a", 1), work("b", 9), work("c", 3)]),
            s(&["capture", "graph", "a(1)", "b(9)", "c(3)"])
        );
        assert_eq!(
            step(&r, &host, 1, vec![work("a", 1), work("b", 2), work("c", 3)]),
            s(&["capture", "graph", "a(1)", "b(2)", "c(3)"])
        );
        // A write to another address, or of another length, is another unit.
        step(&r, &host, 2, vec![write(5, 1)]);
        assert_eq!(step(&r, &host, 2, vec![write(6, 1)]), s(&["w6=1"]));
        let mut longer = write(5, 1);
        if let Op::Write { bytes, .. } = &mut longer {
            bytes.push(0);
        }
        assert_eq!(step(&r, &host, 2, vec![longer]), s(&["w5=1"]));
        assert_eq!(r.stats().replays, 2);
    }

    #[test]
    fn a_prefix_or_a_longer_stretch_is_not_replayed() {
        let (r, host) = (R::new(true), Log::default());
        step(&r, &host, 1, vec![work("a", 1), work("b", 2)]);
        assert_eq!(step(&r, &host, 1, vec![work("a", 1)]), s(&["a(1)"]));
        assert_eq!(r.stats().fallbacks, 1, "a prefix is a fallback");
        assert_eq!(
            step(&r, &host, 1, vec![work("a", 1), work("b", 2), work("c", 3)]),
            s(&["a(1)", "b(2)", "c(3)"])
        );
        assert_eq!(r.stats().replays, 0);
    }

    #[test]
    fn a_download_inside_runs_what_is_held_and_the_tag_never_replays() {
        let (r, host) = (R::new(true), Log::default());
        step(&r, &host, 1, vec![work("a", 1), work("b", 2)]);
        host.ran.borrow_mut().clear();
        r.begin(1);
        r.submit(&host, work("a", 1)).unwrap();
        assert!(r.deferring());
        r.flush(&host).unwrap();
        assert_eq!(*host.ran.borrow(), s(&["a(1)"]), "the held unit ran before the host reads");
        assert!(!r.deferring());
        r.submit(&host, work("b", 2)).unwrap();
        r.end(&host).unwrap();
        assert_eq!(step(&r, &host, 1, vec![work("a", 1), work("b", 2)]), s(&["a(1)", "b(2)"]));
        assert_eq!(r.stats().replays, 0);
    }

    #[test]
    fn off_or_outside_a_stretch_every_unit_runs_at_once_and_capture_failure_runs_live() {
        let (r, host) = (R::new(false), Log::default());
        for _ in 0..3 {
            assert_eq!(step(&r, &host, 1, vec![work("a", 1)]), s(&["a(1)"]));
        }
        assert_eq!(r.stats(), ReplayStats::default());
        let r = R::new(true);
        host.ran.borrow_mut().clear();
        r.submit(&host, work("z", 0)).unwrap();
        assert_eq!(*host.ran.borrow(), s(&["z(0)"]));
        let host = Log { fail_capture: true, ..Default::default() };
        for _ in 0..3 {
            assert_eq!(step(&r, &host, 3, vec![work("a", 1)]), s(&["a(1)"]));
        }
        assert_eq!(r.stats().replays, 0);
    }

    #[test]
    fn at_most_a_few_fingerprints_are_kept_per_tag() {
        let (r, host) = (R::new(true), Log::default());
        for a in 0..=MAX_CANDIDATES as u64 {
            step(&r, &host, 1, vec![work("a", a)]);
        }
        // The oldest (a = 0) went; the newest replay.
        assert_eq!(step(&r, &host, 1, vec![work("a", 0)]), s(&["a(0)"]));
        assert_eq!(
            step(&r, &host, 1, vec![work("a", MAX_CANDIDATES as u64)]),
            s(&["capture", "graph", "a(4)"])
        );
    }

    #[test]
    fn keys_tell_kernels_and_argument_types_apart() {
        // FNV-1a: the offset basis for "", the published value for "a"; stable across runs.
        assert_eq!(name_word(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(name_word("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(name_word("rope_f32"), name_word("rope_f64"));
        assert_eq!(arg_word(3, 5), [3, 5]);
        assert_ne!(arg_word(2, 5), arg_word(3, 5), "an i32 5 is not a u32 5");
        assert_ne!(arg_word(2, 5), arg_word(2, 6));
    }

    #[test]
    fn the_setting_reads_1_0_auto_or_the_default() {
        use ReplayMode::*;
        assert_eq!(mode_value(Some("1"), Off), Always);
        assert_eq!(mode_value(Some("0"), Auto), Off);
        assert_eq!(mode_value(Some("auto"), Off), Auto);
        assert_eq!((mode_value(None, Auto), mode_value(Some(""), Always)), (Auto, Always));
        let err = std::panic::catch_unwind(|| mode_value(Some("yes"), Auto)).unwrap_err();
        assert_eq!(
            err.downcast_ref::<String>().map(String::as_str),
            Some("MMR1_GRAPHS=\"yes\": expected 1 (replay repeated decode steps as CUDA graphs), 0 or auto")
        );
        assert!(R::new(true).enabled() && !R::new(false).enabled());
        assert_eq!([Off, Always, Auto].map(|m| R::with_mode(m).mode()), [Off, Always, Auto]);
    }

    /// A Replay in auto mode whose clock advances by what each step says it took.
    fn auto_with_clock() -> (R, Arc<Mutex<f64>>) {
        let t = Arc::new(Mutex::new(0.0));
        let mut r = R::with_mode(ReplayMode::Auto);
        let tc = t.clone();
        r.clock = Box::new(move || *tc.lock().unwrap());
        (r, t)
    }

    /// Steps of one tag in auto mode, the graph's taking `graph_s` and the others `live_s`
    /// seconds; what each step ran as ("graph", "capture" or "live").
    fn timed_steps(
        r: &R,
        t: &Mutex<f64>,
        host: &Log,
        n: usize,
        graph_s: f64,
        live_s: f64,
    ) -> Vec<&'static str> {
        (0..n)
            .map(|i| {
                let ran = step(r, host, 1, vec![write(7, i as u8), work("gemm", 2)]);
                let way = if ran.first().map(String::as_str) == Some("capture") {
                    "capture"
                } else if ran.first().map(String::as_str) == Some("graph") {
                    "graph"
                } else {
                    "live"
                };
                *t.lock().unwrap() += if way == "graph" { graph_s } else { live_s };
                way
            })
            .collect()
    }

    #[test]
    fn auto_alternates_graph_and_live_steps_then_keeps_the_faster() {
        // Graphs faster: after the first step (recorded) and the capture (not timed: it
        // captures), graph and live steps alternate until each has 4 times, then graphs stay.
        let (r, t) = auto_with_clock();
        let host = Log::default();
        let ways = timed_steps(&r, &t, &host, 16, 1.0, 2.0);
        let want =
            ["live", "capture", "graph", "live", "graph", "live", "graph", "live", "graph", "live"];
        assert_eq!(&ways[..10], &want[..]);
        assert!(ways[10..].iter().all(|&w| w == "graph"), "{ways:?}");
        assert_eq!(r.stats().run_live, 4);
        // Graphs slower: live from then on, the units run as they come, the same as off.
        let (r, t) = auto_with_clock();
        let ways = timed_steps(&r, &t, &host, 16, 2.0, 1.0);
        assert_eq!(&ways[..10], &want[..]);
        assert!(ways[10..].iter().all(|&w| w == "live"), "{ways:?}");
        let ran = step(&r, &host, 1, vec![write(7, 42), work("gemm", 2)]);
        assert_eq!(ran, s(&["w7=42", "gemm(2)"]));
        // A live step keeps no fingerprint of its own: the tag still replays later.
        assert_eq!(r.state.lock().unwrap().tags[&1].candidates.len(), 1);
    }

    #[test]
    fn auto_counts_only_back_to_back_steps_of_a_tag_and_tries_again() {
        let mut trial = Trial::default();
        // Ties go live; four of each decide.
        for _ in 0..3 {
            trial.record(Way::Graph, 1.0);
            trial.record(Way::Live, 1.0);
        }
        assert_eq!(trial.next(), Way::Graph, "undecided: the way with fewer times");
        trial.record(Way::Graph, 1.0);
        assert_eq!(trial.next(), Way::Live);
        trial.record(Way::Live, 1.0);
        assert_eq!(trial.chosen, Some(Way::Live));
        // The median, not the mean: one slow outlier among the graph's steps does not decide.
        let mut t2 = Trial::default();
        for g in [1.0, 1.0, 1.0, 50.0] {
            t2.record(Way::Graph, g);
        }
        for l in [1.5; 4] {
            t2.record(Way::Live, l);
        }
        assert_eq!(t2.chosen, Some(Way::Graph));
        for _ in 0..RETRY_AFTER {
            t2.record(Way::Graph, 1.0);
        }
        assert_eq!((t2.chosen, t2.graph.len()), (None, 0), "tried again after RETRY_AFTER steps");
        // Another tag's stretch between two steps: the first step's time is not counted.
        let (r, t) = auto_with_clock();
        let host = Log::default();
        timed_steps(&r, &t, &host, 2, 1.0, 1.0); // recorded, captured
        for _ in 0..6 {
            step(&r, &host, 1, vec![write(7, 0), work("gemm", 2)]);
            *t.lock().unwrap() += 1.0;
            step(&r, &host, 2, vec![work("other", 3)]);
        }
        let st = r.state.lock().unwrap();
        assert!(st.tags[&1].trial.graph.is_empty() && st.tags[&1].trial.live.is_empty());
    }

    #[test]
    fn a_held_step_asks_for_the_blocks_its_fingerprints_got() {
        let (r, host) = (R::new(true), Log::default());
        assert!(r.preferred_alloc().is_empty(), "outside a stretch");
        r.begin(1);
        r.note_alloc(0x100);
        r.note_alloc(0x200);
        assert!(r.preferred_alloc().is_empty(), "a live stretch has nothing to follow");
        r.submit(&host, work("a", 1)).unwrap();
        r.end(&host).unwrap();
        r.begin(1);
        assert_eq!(r.preferred_alloc(), vec![0x100]);
        r.note_alloc(0x100);
        assert_eq!(r.preferred_alloc(), vec![0x200]);
        r.note_alloc(0x300);
        assert!(r.preferred_alloc().is_empty(), "past the fingerprint's allocations");
        r.submit(&host, work("a", 1)).unwrap();
        r.end(&host).unwrap();
        r.note_alloc(0x400); // outside a stretch: not recorded anywhere
                             // Off: nothing asked, nothing noted.
        let off = R::new(false);
        off.begin(1);
        off.note_alloc(0x100);
        assert!(off.preferred_alloc().is_empty());
    }

    #[test]
    fn the_least_recently_used_fingerprint_goes_first() {
        let (r, host) = (R::new(true), Log::default());
        for a in 0..MAX_CANDIDATES as u64 {
            step(&r, &host, 1, vec![work("a", a)]);
        }
        // Replaying a = 0 makes it the most recently used; a = 1 is now the oldest.
        step(&r, &host, 1, vec![work("a", 0)]);
        step(&r, &host, 1, vec![work("a", 99)]);
        assert_eq!(step(&r, &host, 1, vec![work("a", 0)]), s(&["graph", "a(0)"]), "kept");
        assert_eq!(step(&r, &host, 1, vec![work("a", 1)]), s(&["a(1)"]), "evicted");
    }

    #[test]
    #[should_panic(expected = "do not nest")]
    fn stretches_do_not_nest() {
        let r = R::new(true);
        r.begin(1);
        r.begin(2);
    }
}
