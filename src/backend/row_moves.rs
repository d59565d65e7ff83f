//! Input checks of the row moves (`Backend::scatter_rows`, `Backend::gather_rows`,
//! `Backend::copy_rows_within`), shared by every backend so that both reject the same inputs
//! with the same message.

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

/// Panics unless `src_rows` and `dst_rows` pair up whole rows of width `width` inside a buffer
/// of `buf_len` values, the destinations distinct and none of them a source (a row copied
/// within one buffer must not be overwritten while another copy reads it).
pub fn check_rows_within(src_rows: &[usize], dst_rows: &[usize], width: usize, buf_len: usize) {
    assert_eq!(src_rows.len(), dst_rows.len(), "copy_rows_within: one source row per destination");
    let n = src_rows.len() * width;
    check_rows("copy_rows_within src", src_rows, width, buf_len, n, false);
    check_rows("copy_rows_within dst", dst_rows, width, buf_len, n, true);
    let sources: std::collections::HashSet<usize> = src_rows.iter().copied().collect();
    if let Some(r) = dst_rows.iter().find(|r| sources.contains(r)) {
        panic!("copy_rows_within: row {r} is both a source and a destination");
    }
}

#[cfg(test)]
mod tests {
    use super::check_rows_within;

    fn panics(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
        let e = std::panic::catch_unwind(f).expect_err("should panic");
        e.downcast_ref::<String>().cloned().unwrap_or_default()
    }

    #[test]
    fn rows_copied_within_a_buffer_are_checked() {
        check_rows_within(&[0, 1], &[4, 5], 3, 18);
        let e = panics(|| check_rows_within(&[0, 1], &[1, 5], 3, 18));
        assert!(e.contains("row 1 is both a source and a destination"), "{e}");
        let e = panics(|| check_rows_within(&[0, 1], &[4, 4], 3, 18));
        assert!(e.contains("listed twice"), "{e}");
        let e = panics(|| check_rows_within(&[0, 1], &[4, 6], 3, 18));
        assert!(e.contains("out of range"), "{e}");
        let e = panics(|| check_rows_within(&[0], &[4, 5], 3, 18));
        assert!(e.contains("one source row per destination"), "{e}");
    }
}
