//! Request parsing: any bytes given to a job route's body parser end in a
//! request or an API error, never a panic; an error's status is a 4xx.

#![no_main]

use libfuzzer_sys::fuzz_target;
use precis::http::{
    parse_one_or_many, DigestRequest, OneOrMany, SummarizeRequest, TranslateRequest,
};

fn check<T: serde::de::DeserializeOwned>(data: &[u8]) {
    match parse_one_or_many::<T>(data) {
        Ok(OneOrMany::One(_)) => {}
        Ok(OneOrMany::Many(items)) => {
            for item in items {
                if let Err(e) = item {
                    assert!(e.code.status().is_client_error(), "{e:?}");
                }
            }
        }
        Err(e) => assert!(e.code.status().is_client_error(), "{e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    check::<SummarizeRequest>(data);
    check::<TranslateRequest>(data);
    check::<DigestRequest>(data);
});
