//! serde_json writes a non-finite float (a diverged loss, the mean of nothing) as `null`, and
//! refuses `null` when reading an `f32`/`f64` back. Record fields that are floats read through
//! [`nan_if_null`], so such a line reads back whole, with NaN where the value was not finite,
//! instead of being dropped with all its other values.

use serde::{Deserialize, Deserializer};

/// A float type with a NaN.
pub trait Float: Sized {
    const NAN: Self;
}

impl Float for f32 {
    const NAN: Self = f32::NAN;
}

impl Float for f64 {
    const NAN: Self = f64::NAN;
}

/// `#[serde(deserialize_with = "nan_if_null")]`: a number, or NaN for `null`.
pub fn nan_if_null<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Float,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or(T::NAN))
}

#[cfg(test)]
mod tests {
    use super::nan_if_null;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct R {
        #[serde(deserialize_with = "nan_if_null")]
        x: f64,
        #[serde(deserialize_with = "nan_if_null")]
        y: f32,
    }

    #[test]
    fn null_reads_as_nan_and_numbers_as_themselves() {
        let r: R = serde_json::from_str(r#"{"x": null, "y": 1.5}"#).unwrap();
        assert!(r.x.is_nan());
        assert_eq!(r.y, 1.5);
        let written = serde_json::to_string(&serde_json::json!({"x": f64::NAN, "y": 2.0})).unwrap();
        let back: R = serde_json::from_str(&written).unwrap();
        assert!(back.x.is_nan() && back.y == 2.0, "{written}");
        assert!(serde_json::from_str::<R>(r#"{"x": "a", "y": 1}"#).is_err());
        assert!(serde_json::from_str::<R>(r#"{"y": 1}"#).is_err(), "missing is not null");
    }
}
