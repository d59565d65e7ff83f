//! Numeric backends: the `Backend` trait, its CPU reference, and (feature `cuda`) the GPU.
