//! Request parsing: any bytes given to a job route's body parser end in a
//! request or an API error, never a panic; an error's status is a 4xx.

#![no_main]

use libfuzzer_sys::fuzz_target;
use precis::http::{
    parse_single_or_batch, DigestRequest, SingleOrBatch, SummarizeRequest, TranslateRequest,
};

fn check<T: serde::de::DeserializeOwned>(data: &[u8]) {
    match parse_single_or_batch::<T>(data, 64) {
        Ok(SingleOrBatch::Single(_)) => {}
        Ok(SingleOrBatch::Batch(items)) => {
            for item in items {
                if let Err(e) = item {
                    assert!(precis::http::error::status(e.code).is_client_error(), "{e:?}");
                }
            }
        }
        Err(e) => assert!(precis::http::error::status(e.code).is_client_error(), "{e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    check::<SummarizeRequest>(data);
    check::<TranslateRequest>(data);
    check::<DigestRequest>(data);
});
