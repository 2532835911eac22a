//! Job validation on arbitrary bytes: a protobuf JobSpec as Submit decodes it, through the
//! checks of every flag, environment value, path, bound and image entry. Never a panic, and a
//! spec that passes passes again unchanged (the checks only fill in defaults).
#![no_main]

use cached::scheduler::Settings;
use cached::scheduler::validate::check_spec;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::v1::JobSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(mut spec) = JobSpec::decode(data) else { return };
    let settings = Settings::default();
    match check_spec(&mut spec, &settings) {
        Ok(()) => {
            let mut again = spec.clone();
            check_spec(&mut again, &settings).expect("a checked spec passes again");
            assert_eq!(again, spec);
        }
        Err(err) => assert!(!err.to_string().is_empty()),
    }
});
