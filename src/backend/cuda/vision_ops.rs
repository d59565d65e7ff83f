//! Launchers of the vision tower's elementwise kernels (kernels/vision.cu). Bidirectional
//! attention is in `attention` (the same kernels as the decoder's, another mask).

use super::device::{Arg, Device};
use super::{CudaBackend, DevBuf};

type Buf<D> = DevBuf<<D as Device>::Mem>;

impl<D: Device> CudaBackend<D> {
    /// `Backend::rope_table`.
    pub(super) fn rope_from_table(
        &self,
        x: &mut Buf<D>,
        angles: &Buf<D>,
        rows: usize,
        n_heads: usize,
        head_dim: usize,
        inverse: bool,
    ) {
        let half = head_dim / 2;
        if rows == 0 || half == 0 || n_heads == 0 {
            return;
        }
        assert!(
            angles.len >= rows * half,
            "rope_table: angle table smaller than rows * head_dim/2"
        );
        assert!(
            x.len >= rows * n_heads * head_dim,
            "rope_table: x smaller than rows * heads * head_dim"
        );
        self.elementwise(
            "rope_table_f32",
            rows * n_heads * half,
            &[
                Arg::Ptr(x.mem()),
                Arg::Ptr(angles.mem()),
                Arg::I32(rows as i32),
                Arg::I32(n_heads as i32),
                Arg::I32(head_dim as i32),
                Arg::F32(if inverse { -1.0 } else { 1.0 }),
            ],
        );
    }

    /// `Backend::gelu`.
    pub(super) fn gelu_fwd(&self, out: &mut Buf<D>, x: &Buf<D>) {
        assert_eq!(out.len, x.len, "gelu: length mismatch");
        self.elementwise(
            "gelu_f32",
            x.len,
            &[Arg::Ptr(out.mem()), Arg::Ptr(x.mem()), Arg::I64(x.len as i64)],
        );
    }

    /// `Backend::gelu_backward`.
    pub(super) fn gelu_bwd(&self, dx: &mut Buf<D>, dout: &Buf<D>, x: &Buf<D>) {
        assert!(dx.len == x.len && dout.len == x.len, "gelu_backward: length mismatch");
        self.elementwise(
            "gelu_bwd_f32",
            x.len,
            &[Arg::Ptr(dx.mem()), Arg::Ptr(dout.mem()), Arg::Ptr(x.mem()), Arg::I64(x.len as i64)],
        );
    }
}
