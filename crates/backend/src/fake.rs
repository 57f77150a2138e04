//! A deterministic fake model for engine and server tests (feature
//! `test-backend`, never on by default). It needs no weights and answers
//! instantly, so tests of queues, errors and shutdown run in milliseconds.
//!
//! Behaviour: a prompt whose system message names Russian or Hindi gets the last
//! user message back, letter by letter transliterated into Cyrillic or
//! Devanagari; any other prompt gets the first sentence of the last paragraph of
//! the last user message. Markers in the user text drive failure tests:
//! `FAKE_PANIC` panics inside the worker, `FAKE_ERROR` returns a runtime error,
//! `FAKE_SLOW` sleeps 50 ms per word, `FAKE_LOOP` reports a loop.

use std::sync::Arc;
use std::time::Duration;

use super::{
    Arrivals, Backend, BackendError, Cached, ChatMessage, FinishReason, Flow, Generation,
    GenerationRequest, ModelInfo, Role, TokenCounter, WholeBatch,
};

/// The languages the fake model writes.
pub const FAKE_LANGUAGES: &[&str] = &["en", "ru", "hi"];

/// The fake model.
pub struct FakeBackend {
    info: ModelInfo,
}

impl FakeBackend {
    /// A fake model with this id that writes `en`, `ru` and `hi`.
    pub fn new(id: &str) -> Self {
        Self {
            info: ModelInfo {
                kind: crate::ModelKind::Chat,
                id: id.to_string(),
                revision: "fake".into(),
                family: "fake".into(),
                context_length: 4096,
                target_languages: FAKE_LANGUAGES.iter().map(|l| l.to_string()).collect(),
                license: None,
                quantize: crate::Quantize::None,
                device: crate::Placement::Cpu,
            },
        }
    }
}

fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

fn transliterate(text: &str, table: &[(char, &str)]) -> String {
    text.chars()
        .map(|c| {
            let lower = c.to_ascii_lowercase();
            table
                .iter()
                .find(|(k, _)| *k == lower)
                .map(|(_, v)| v.to_string())
                .unwrap_or_else(|| c.to_string())
        })
        .collect()
}

const CYRILLIC: &[(char, &str)] = &[
    ('a', "а"),
    ('b', "б"),
    ('c', "к"),
    ('d', "д"),
    ('e', "е"),
    ('f', "ф"),
    ('g', "г"),
    ('h', "х"),
    ('i', "и"),
    ('j', "ж"),
    ('k', "к"),
    ('l', "л"),
    ('m', "м"),
    ('n', "н"),
    ('o', "о"),
    ('p', "п"),
    ('q', "к"),
    ('r', "р"),
    ('s', "с"),
    ('t', "т"),
    ('u', "у"),
    ('v', "в"),
    ('w', "в"),
    ('x', "кс"),
    ('y', "й"),
    ('z', "з"),
];

const DEVANAGARI: &[(char, &str)] = &[
    ('a', "अ"),
    ('b', "ब"),
    ('c', "क"),
    ('d', "द"),
    ('e', "ए"),
    ('f', "फ"),
    ('g', "ग"),
    ('h', "ह"),
    ('i', "इ"),
    ('j', "ज"),
    ('k', "क"),
    ('l', "ल"),
    ('m', "म"),
    ('n', "न"),
    ('o', "ओ"),
    ('p', "प"),
    ('q', "क"),
    ('r', "र"),
    ('s', "स"),
    ('t', "त"),
    ('u', "उ"),
    ('v', "व"),
    ('w', "व"),
    ('x', "क्स"),
    ('y', "य"),
    ('z', "ज़"),
];

fn answer(messages: &[ChatMessage]) -> String {
    let system = messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| m.content.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let user = messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(|m| m.content.as_str())
        .unwrap_or("");
    if system.contains("Russian") {
        transliterate(user, CYRILLIC)
    } else if system.contains("Hindi") {
        transliterate(user, DEVANAGARI)
    } else {
        let last = user.split("\n\n").last().unwrap_or("");
        let end = last.find(". ").map(|i| i + 1).unwrap_or(last.len());
        last[..end].trim().to_string()
    }
}

impl Backend for FakeBackend {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn token_counter(&self) -> TokenCounter {
        Arc::new(|text: &str| Ok(words(text)))
    }

    fn prompt_tokens(&self, messages: &[ChatMessage]) -> Result<usize, BackendError> {
        Ok(messages.iter().map(|m| words(&m.content) + 4).sum())
    }

    fn generate(
        &mut self,
        requests: &[GenerationRequest],
        on_token: &mut dyn FnMut(usize, &str) -> Flow,
    ) -> Vec<Result<Generation, BackendError>> {
        let mut batch = WholeBatch::new(requests, on_token);
        self.generate_joining(&mut batch);
        batch.results()
    }

    /// A word per step for every sequence, as a decoder writes a token per
    /// forward pass; a request joins at the next step. `FAKE_SLOW` makes a
    /// step take 50 ms while such a request runs.
    fn generate_joining(&mut self, arrivals: &mut dyn Arrivals) {
        let mut active: Vec<Writing> = Vec::new();
        loop {
            for (index, request) in arrivals.join() {
                match self.start(index, &request) {
                    Ok(w) if w.finish().is_some() => arrivals.done(index, Ok(w.result())),
                    Ok(w) => active.push(w),
                    Err(e) => arrivals.done(index, Err(e)),
                }
            }
            if active.is_empty() {
                return;
            }
            if active.iter().any(|w| w.slow) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let mut still = Vec::with_capacity(active.len());
            for mut w in active.drain(..) {
                let word = w.words[w.written].clone();
                w.text.push_str(&word);
                w.written += 1;
                if arrivals.text(w.index, &word) == Flow::Stop {
                    w.cancelled = true;
                }
                if w.finish().is_some() {
                    arrivals.done(w.index, Ok(w.result()));
                } else {
                    still.push(w);
                }
            }
            active = still;
        }
    }
}

/// A request the fake model is answering.
struct Writing {
    index: usize,
    /// The answer, a word (with its trailing space) per step.
    words: Vec<String>,
    written: usize,
    text: String,
    max_new_tokens: usize,
    prompt_tokens: usize,
    slow: bool,
    looping: bool,
    cancelled: bool,
}

impl FakeBackend {
    /// Checks a request and plans its answer (`FAKE_PANIC` panics here,
    /// `FAKE_ERROR` fails).
    fn start(&self, index: usize, req: &GenerationRequest) -> Result<Writing, BackendError> {
        let user = req
            .messages
            .iter()
            .map(|m| m.content.as_str())
            .collect::<String>();
        if user.contains("FAKE_PANIC") {
            panic!("fake backend asked to panic");
        }
        if user.contains("FAKE_ERROR") {
            return Err(BackendError::Runtime("fake backend asked to fail".into()));
        }
        let prompt_tokens = self.prompt_tokens(&req.messages)?;
        if prompt_tokens + req.params.max_new_tokens > self.info.context_length {
            return Err(BackendError::ContextOverflow {
                prompt_tokens,
                max_new_tokens: req.params.max_new_tokens,
                context_length: self.info.context_length,
            });
        }
        Ok(Writing {
            index,
            words: (answer(&req.messages).split_inclusive(' '))
                .map(str::to_string)
                .collect(),
            written: 0,
            text: String::new(),
            max_new_tokens: req.params.max_new_tokens,
            prompt_tokens,
            slow: user.contains("FAKE_SLOW"),
            looping: user.contains("FAKE_LOOP"),
            cancelled: false,
        })
    }
}

impl Writing {
    /// Why it ended, once it has.
    fn finish(&self) -> Option<FinishReason> {
        if self.cancelled {
            Some(FinishReason::Cancelled)
        } else if self.written == self.words.len() {
            Some(FinishReason::Stop)
        } else if self.written == self.max_new_tokens {
            Some(FinishReason::Length)
        } else {
            None
        }
    }

    fn result(&self) -> Generation {
        let finish = self.finish().unwrap_or(FinishReason::Length);
        Generation {
            text: self.text.trim().to_string(),
            prompt_tokens: self.prompt_tokens,
            generated_tokens: self.written,
            finish: if self.looping {
                FinishReason::Loop
            } else {
                finish
            },
            cache: Cached::Off,
        }
    }
}
