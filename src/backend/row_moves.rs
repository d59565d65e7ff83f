//! Input checks of the row moves (`Backend::scatter_rows`, `Backend::gather_rows`), shared by
//! every backend so that both reject the same inputs with the same message.

/// Panics unless `rows` index whole rows of width `width` inside a buffer of `buf_len` values
/// and `src_len` holds `rows.len()` rows; `what` names the op and the buffer. With `distinct`
/// (a scatter's destination rows) a repeated row panics too: two writes to one row would race
/// on a GPU and give an order-dependent result.
pub fn check_rows(
    what: &str,
    rows: &[usize],
    width: usize,
    buf_len: usize,
    packed_len: usize,
    distinct: bool,
) {
    assert!(
        rows.len() * width <= packed_len,
        "{what}: {} rows of width {width} need {} values, the packed buffer holds {packed_len}",
        rows.len(),
        rows.len() * width
    );
    if width == 0 {
        return;
    }
    let n_rows = buf_len / width;
    if let Some((t, &r)) = rows.iter().enumerate().find(|(_, &r)| r >= n_rows) {
        panic!("{what}: rows[{t}] = {r} is out of range (the buffer holds {n_rows} rows of width {width})");
    }
    assert!(n_rows <= u32::MAX as usize, "{what}: more than 2^32 rows");
    // Decode steps and prefills list their rows in increasing order: one pass. Otherwise sort
    // a copy (a repeated row is then next to itself).
    if distinct && !rows.windows(2).all(|w| w[0] < w[1]) {
        let mut sorted = rows.to_vec();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            panic!("{what}: row {} is listed twice (destination rows must be distinct)", w[0]);
        }
    }
}
