//! Settings that a user types as a word (`--device cuda:1`, `--precision bf16`,
//! `--collective nccl`) are the same word in configuration files: serialized through their
//! `Display`, read back through their `FromStr` (whose error message serde passes on).

/// Implements `serde::Serialize` by `Display` and `serde::Deserialize` by `FromStr` for `$t`.
#[macro_export]
macro_rules! serde_via_str {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
