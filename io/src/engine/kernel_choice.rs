//! Which quantized-matmul kernels run: the instruction set ([`Isa`], detected at run time and capped by
//! `OLLAMAMAX_KERNELS`) and the arithmetic ([`Arithmetic`], chosen when a model loads, `OLLAMAMAX_ARITHMETIC`).

use std::sync::OnceLock;

/// The instruction set a kernel runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust, any CPU.
    Portable,
    /// x86-64 AVX2 with FMA and F16C.
    Avx2,
    /// x86-64 AVX-512 (F, BW, VL) with VNNI, on 256-bit registers.
    Avx512Vnni,
}

/// The environment variable that caps the instruction set (`portable`, `avx2` or `avx512`), e.g. to test the
/// fallbacks on a machine that has more.
pub const ISA_VARIABLE: &str = "OLLAMAMAX_KERNELS";

impl Isa {
    /// The best instruction set this CPU has.
    pub fn detected() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("fma")
            {
                return Self::Avx512Vnni;
            }
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return Self::Avx2;
            }
        }
        Self::Portable
    }

    /// Every instruction set this CPU can run, from the simplest.
    pub fn available() -> Vec<Self> {
        [Self::Portable, Self::Avx2, Self::Avx512Vnni]
            .into_iter()
            .filter(|isa| *isa <= Self::detected())
            .collect()
    }

    /// What the kernels use: the detected set, capped by [`ISA_VARIABLE`] when it is set (an unknown value is
    /// ignored with a warning). Read once per process.
    pub fn current() -> Self {
        static CURRENT: OnceLock<Isa> = OnceLock::new();
        *CURRENT.get_or_init(|| {
            let detected = Self::detected();
            match std::env::var(ISA_VARIABLE) {
                Ok(value) => match Self::parse(&value) {
                    Some(cap) => cap.min(detected),
                    None => {
                        eprintln!(
                            "warning: {ISA_VARIABLE}={value:?} is not portable, avx2 or avx512; using {detected:?}"
                        );
                        detected
                    }
                },
                Err(_) => detected,
            }
        })
    }

    fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "portable" | "none" | "scalar" => Some(Self::Portable),
            "avx2" => Some(Self::Avx2),
            "avx512" | "avx512vnni" => Some(Self::Avx512Vnni),
            _ => None,
        }
    }
}

/// Which arithmetic the quantized matmuls use, chosen when a model loads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Arithmetic {
    /// The fastest kernels: panels ([`super::panel`]) for Q4_0, Q5_0, Q5_1, Q4_K, Q5_K and Q8_0 block matrices,
    /// whose dot products sum each block in integers before one multiply-add. Results differ from llama.cpp's in
    /// the last bits for those types.
    #[default]
    Fast,
    /// llama.cpp's `ggml_vec_dot_*` order of operations wherever our kernels can reproduce it (Q4_0, Q4_1, Q5_0,
    /// Q5_1, Q8_0): greedy output equals llama.cpp's token for token. Slower for prompts and batches.
    LlamaCpp,
}

/// The environment variable that picks [`Arithmetic::LlamaCpp`] (`llama.cpp`) over the default (`fast`).
pub const ARITHMETIC_VARIABLE: &str = "OLLAMAMAX_ARITHMETIC";

impl Arithmetic {
    /// [`ARITHMETIC_VARIABLE`]'s choice; the default where it is unset, or unknown (with a warning).
    pub fn from_env() -> Self {
        match std::env::var(ARITHMETIC_VARIABLE) {
            Ok(value) => Self::parse(&value).unwrap_or_else(|| {
                eprintln!(
                    "warning: {ARITHMETIC_VARIABLE}={value:?} is not fast or llama.cpp; using fast"
                );
                Self::Fast
            }),
            Err(_) => Self::Fast,
        }
    }

    fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "fast" | "" => Some(Self::Fast),
            "llama.cpp" | "llamacpp" | "exact" => Some(Self::LlamaCpp),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_parses() {
        assert_eq!(Isa::parse("portable"), Some(Isa::Portable));
        assert_eq!(Isa::parse(" AVX2 "), Some(Isa::Avx2));
        assert_eq!(Isa::parse("avx512"), Some(Isa::Avx512Vnni));
        assert_eq!(Isa::parse("sse9"), None);
        assert_eq!(Arithmetic::parse("llama.cpp"), Some(Arithmetic::LlamaCpp));
        assert_eq!(Arithmetic::parse(" Fast"), Some(Arithmetic::Fast));
        assert_eq!(Arithmetic::parse("slow"), None);
        assert!(Isa::available().contains(&Isa::Portable));
        assert!(Isa::available().contains(&Isa::current()));
    }
}
