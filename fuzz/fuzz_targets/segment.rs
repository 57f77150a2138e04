//! Text segmentation: clean-up and the sentence splitter never panic, and
//! keep their documented promises on any UTF-8 text.

#![no_main]

use libfuzzer_sys::fuzz_target;
use precis_core::task::clean::{prepare, split_sentences, CleanOptions};

fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The sentences joined by single spaces are the text's words; none is empty.
    let sentences = split_sentences(text);
    assert!(sentences.iter().all(|s| !s.trim().is_empty()));
    assert_eq!(sentences.join(" "), words(text));
    for enabled in [true, false] {
        let opts = CleanOptions { enabled };
        let a = prepare(text, None, &opts);
        assert_eq!(a.paragraphs_in, a.paragraphs.len() + a.dropped.len());
        assert!(a
            .paragraphs
            .iter()
            .all(|p| !p.is_empty() && !p.contains('\n')));
        if !enabled {
            assert!(a.dropped.is_empty());
        }
        // Idempotent on its own output.
        let again = prepare(&a.to_text(), None, &opts);
        assert_eq!(again.headline, a.headline);
        assert_eq!(again.paragraphs, a.paragraphs);
        assert!(again.dropped.is_empty());
    }
});
