//! The caching device allocator (src/backend/cuda/alloc.rs) on the emulator: a training step
//! (forward, log-probs, loss, backward, AdamW) gives the same bits whether its buffers are
//! fresh or reused (reused memory is poisoned with NaN, so an op that reads an output it did
//! not write fails here), every step after the first allocates nothing from the device, and the
//! peak it reports covers at least the parameters, gradients and AdamW moments.
#![cfg(feature = "emu")]

use crate::common;
use common::*;
use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
use mmr1_fast::backend::cuda::CudaBackend;
use mmr1_fast::backend::Backend;
use mmr1_fast::model::{Packed, ParamLayout};
use mmr1_fast::optim::{AdamW, AdamwConfig};
use mmr1_fast::train::{micro_step, SftLoss, Workspace};

/// What a run leaves: the loss of each step and every parameter after the last.
type Outcome = (Vec<f64>, Vec<Vec<f32>>);

/// A model, its gradients and optimizer on `be`, trained `steps` steps on one packed batch of
/// ragged sequences. Returns the outcome and the allocator's fresh-allocation count after
/// each step.
fn train<B: Backend>(be: &B, steps: usize) -> (Outcome, Vec<u64>) {
    let mut model = random_model_on(be, tiny_config(97, false), 11);
    let mut opt = AdamW::new(be, &model.params, AdamwConfig::default());
    let mut ws = Workspace::new(&model, be);
    let seqs = [random_ids(13, 97, 1), random_ids(30, 97, 2), random_ids(5, 97, 3)];
    let batch = Packed::new(&seqs);
    let (_, has_target) = batch.next_token_targets();
    let mut loss = SftLoss::new(&has_target, has_target.iter().filter(|&&b| b).count());
    let (mut losses, mut fresh) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        ws.zero_grads(be);
        losses.push(micro_step(be, &model, &batch, &mut loss, &mut ws).unwrap());
        opt.step(be, &mut model.params, &ws.grads, 1e-2);
        fresh.push(be.memory_stats().map_or(0, |s| s.fresh_allocs));
    }
    ((losses, model.to_host(be)), fresh)
}

#[test]
fn reused_memory_changes_no_result_and_steps_after_the_first_allocate_nothing() {
    let cached = CudaBackend::with_device(EmuDevice::with_schedules(&[Schedule::Forward]));
    let plain = CudaBackend::with_device(
        EmuDevice::with_schedules(&[Schedule::Forward]).with_caching(false),
    );
    let (first, fresh) = train(&cached, 4);
    println!("fresh allocations after each step: {fresh:?}");
    assert!(fresh[0] > 0);
    // micro_step plans the backward scratch before the forward, so the first step already
    // has the steady state's live set: every later step is served from the cache entirely.
    for (i, f) in fresh.iter().enumerate().skip(1) {
        assert_eq!(*f, fresh[0], "step {} allocated {} buffers fresh", i + 1, f - fresh[0]);
    }
    // The backend keeps a few small index arrays (positions, attention work items) for
    // reuse; every other buffer must be back.
    cached.clear_upload_cache();
    let s = cached.memory_stats().unwrap();
    assert!(s.cached_allocs > 0);
    assert_eq!(s.in_use_bytes, 0, "every buffer of the run came back");

    // The same run again on the warm cache: everything (model, moments, activations) comes
    // from freed, NaN-poisoned blocks, and nothing is allocated fresh.
    let before = cached.memory_stats().unwrap();
    let (second, _) = train(&cached, 4);
    let after = cached.memory_stats().unwrap();
    assert_eq!(after.fresh_allocs, before.fresh_allocs, "a warm cache served the whole run");
    assert_eq!(after.peak_reserved_bytes, before.peak_reserved_bytes);
    // And without a cache at all.
    let (third, _) = train(&plain, 4);
    for (name, other) in [("warm cache", &second), ("no cache", &third)] {
        assert_eq!(first.0, other.0, "{name}: losses differ");
        for (i, (a, b)) in first.1.iter().zip(&other.1).enumerate() {
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{name}: parameter {i} differs");
        }
    }
    assert!(first.0.iter().all(|l| l.is_finite()) && first.0[3] < first.0[0], "{:?}", first.0);
    let p = plain.memory_stats().unwrap();
    assert_eq!(p.cached_allocs, 0);
    assert!(p.peak_reserved_bytes <= s.peak_reserved_bytes);
}

#[test]
fn peak_memory_covers_parameters_gradients_and_moments() {
    let be = CudaBackend::emulator();
    let (_, _) = train(&be, 1);
    let s = be.memory_stats().unwrap();
    let cfg = tiny_config(97, false);
    let numel: usize = ParamLayout::new(&cfg).specs.iter().map(|p| p.numel()).sum();
    // weights, gradients, AdamW m and v: four f32 copies live together during the update.
    let floor = 4 * numel as u64 * 4;
    println!("tiny model: {numel} parameters; {}", s.summary());
    assert!(s.peak_in_use_bytes >= floor, "peak {} < {floor}", s.peak_in_use_bytes);
    assert!(s.peak_reserved_bytes >= s.peak_in_use_bytes);
    // Size classes round by at most 1/8 (or to 512 B); activations of 48 tokens are small:
    // a peak far above the state would mean something is kept that should not be.
    assert!(s.peak_in_use_bytes < 4 * floor, "peak {} for a state of {floor}", s.peak_in_use_bytes);
    assert!(be.memory_stats().unwrap().summary().contains("peak"));
    assert_eq!(mmr1_fast::backend::cpu::Cpu.memory_stats(), None);
}

#[test]
fn a_reused_block_reads_as_nan() {
    use mmr1_fast::backend::cuda::device::Device;
    let d = EmuDevice::with_schedules(&[Schedule::Forward]);
    let m = d.upload(bytemuck::cast_slice(&[1.5f32; 300]));
    drop(m);
    let m = d.alloc(1200);
    let back: Vec<f32> = bytemuck::cast_slice(&d.download(&m, 1200)).to_vec();
    assert!(back.iter().all(|x| x.is_nan()), "stale data leaked: {:?}", &back[..4]);
    assert_eq!(d.memory_stats().unwrap().cached_allocs, 1);
}

#[test]
fn sft_steps_report_peak_device_memory_and_the_cpu_reports_none() {
    use mmr1_fast::backend::cpu::Cpu;
    use mmr1_fast::data::sft_data::SftExample;
    use mmr1_fast::pipeline::metrics::Record;
    use mmr1_fast::train::sft::{SftConfig, SftTrainer};
    fn steps<B: Backend>(be: &B) -> Vec<mmr1_fast::train::sft::SftStepMetrics> {
        let model = random_model_on(be, tiny_config(97, true), 3);
        let data: Vec<SftExample> = (0..4)
            .map(|i| {
                let ids = random_ids(9 + 3 * i, 97, 20 + i as u64);
                let trained = (0..ids.len()).map(|j| j >= 4).collect();
                SftExample { ids, trained }
            })
            .collect();
        let c = SftConfig { batch_size: 2, epochs: 1, ..Default::default() };
        let mut tr = SftTrainer::new(be, model, data, c).unwrap();
        (0..2).map(|_| tr.step(be).unwrap()).collect()
    }
    let emu = steps(&CudaBackend::emulator());
    let m = emu[1].device_memory.expect("the emulator reports device memory");
    assert!(m.peak_reserved_bytes >= m.peak_in_use_bytes && m.peak_in_use_bytes > 0);
    let line = Record::Sft(emu[1].clone()).to_json();
    let peak = &line["device_memory"]["peak_reserved_bytes"];
    assert_eq!(peak.as_u64(), Some(m.peak_reserved_bytes), "{line}");
    assert_eq!(Record::from_json(&line), Some(Record::Sft(emu[1].clone())));
    let cpu = steps(&Cpu);
    assert_eq!(cpu[1].device_memory, None);
    let line = Record::Sft(cpu[1].clone()).to_json();
    assert!(line.get("device_memory").is_none(), "{line}");
}
