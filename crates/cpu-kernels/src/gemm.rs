//! f32 GEMM through the `gemm` crate, made batch-invariant: a row's result never depends on
//! how many rows came with it.

/// `dst[m, n] = alpha * dst + A @ B` with `dst` rows `dst_rs` apart, `A[i, p]` at
/// `a[i * rsa + p * csa]` and `B[p, j]` at `b[p * rsb + j * csb]` (so a transpose is a swap of
/// strides). With `alpha == 0` the old `dst` is never read: NaN poison does not leak. On more
/// than one thread the `gemm` crate splits rows/columns of `dst`; its k loop stays sequential,
/// so an element's sum order does not depend on the thread count.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    dst: &mut [f32],
    dst_rs: usize,
    alpha: f32,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    (m, n, k): (usize, usize, usize),
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * dst_rs + n <= dst.len(), "sgemm: output too small");
    if k == 0 {
        for row in dst.chunks_mut(dst_rs).take(m) {
            row[..n].iter_mut().for_each(|x| *x = if alpha == 0.0 { 0.0 } else { *x * alpha });
        }
        return;
    }
    assert!((m - 1) * rsa + (k - 1) * csa < a.len(), "sgemm: A too small");
    assert!((k - 1) * rsb + (n - 1) * csb < b.len(), "sgemm: B too small");
    // Batch invariance: the gemm crate sends small products (m * n <= 256, m and n <= 64, or
    // a single row) to other kernels (horizontal dot products, gemv, another k blocking) that
    // round differently from its main kernel, so a row's result would depend on how many rows
    // came with it (a sequence's log-probs on its neighbours). Pad such products with zero rows
    // up to a size the main kernel takes; they are small, so the copies cost nothing.
    let min_rows = (256 / n + 1).max(if n <= 64 { 65 } else { 2 });
    if m < min_rows {
        let mp = min_rows;
        let mut ap = vec![0.0f32; mp * k];
        for (i, row) in ap.chunks_mut(k).take(m).enumerate() {
            for (p, x) in row.iter_mut().enumerate() {
                *x = a[i * rsa + p * csa];
            }
        }
        let mut dp = vec![0.0f32; mp * n];
        if alpha != 0.0 {
            for i in 0..m {
                dp[i * n..(i + 1) * n].copy_from_slice(&dst[i * dst_rs..i * dst_rs + n]);
            }
        }
        sgemm(&mut dp, n, alpha, &ap, (k, 1), b, (rsb, csb), (mp, n, k), threads);
        for i in 0..m {
            dst[i * dst_rs..i * dst_rs + n].copy_from_slice(&dp[i * n..(i + 1) * n]);
        }
        return;
    }
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the asserts above keep every addressed element inside its slice; `dst` is
    // exclusively borrowed and does not overlap `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            alpha != 0.0,
            a.as_ptr(),
            csa as isize,
            rsa as isize,
            b.as_ptr(),
            csb as isize,
            rsb as isize,
            alpha,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Single-threaded `sgemm` for work already split over rayon tasks: `dst = A @ B`, or
/// `dst += A @ B` when `acc`. Arguments in the order dst, its row stride, acc, A and its
/// (row, column) strides, B and its strides, then m, n, k.
#[allow(clippy::too_many_arguments)]
pub fn gemm_st(
    dst: &mut [f32],
    dst_rs: usize,
    acc: bool,
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    rsb: usize,
    csb: usize,
    m: usize,
    n: usize,
    k: usize,
) {
    let alpha = if acc { 1.0 } else { 0.0 };
    sgemm(dst, dst_rs, alpha, a, (rsa, csa), b, (rsb, csb), (m, n, k), 1);
}
