//! libFuzzer entry point; the body lives in the library so the stable
//! replay and smoke runners exercise exactly the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgrelay_fuzz::copy_data(data));
