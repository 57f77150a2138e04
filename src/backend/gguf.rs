//! Decoder-only LLMs from GGUF files (Qwen2 / Qwen2.5, and Llama-architecture
//! models such as SmolLM2), run through candle-transformers' quantized
//! implementations.
//!
//! The tokenizer and chat template come from the file's own metadata
//! ([`crate::tokenizer`]), so one `.gguf` file is the whole model.
//!
//! ```no_run
//! # fn main() -> Result<(), precis::backend::BackendError> {
//! use precis::backend::{Backend, ChatMessage, GenerationParams, GenerationRequest, Flow};
//! use precis::backend::gguf::{GgufModel, GgufOptions};
//! let mut model = GgufModel::load(std::path::Path::new("SmolLM2-135M-Instruct.Q4_1.gguf"), GgufOptions::default())?;
//! let req = GenerationRequest { messages: vec![ChatMessage::user("Hello")], params: GenerationParams::default() };
//! let out = model.generate(&[req], &mut |_, _| Flow::Continue);
//! # Ok(()) }
//! ```

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::{quantized_llama, quantized_qwen2};

use super::generation::{loop_cut, IncrementalText, Sampler};
use super::{
    Backend, BackendError, ChatMessage, FinishReason, Flow, Generation, GenerationRequest,
    ModelInfo, TokenCounter,
};
use crate::tokenizer::{tokenizer_from_gguf, GgufTokenizer};

/// How to load a GGUF model.
#[derive(Debug, Clone, Default)]
pub struct GgufOptions {
    /// Id reported in results (defaults to the file name).
    pub id: Option<String>,
    /// Revision reported in results (defaults to `local`).
    pub revision: Option<String>,
    /// Languages the model may write (from its manifest).
    pub target_languages: Vec<String>,
    /// Run on the first CUDA device (needs the `cuda` feature).
    pub cuda: bool,
}

enum Weights {
    Qwen2(quantized_qwen2::ModelWeights),
    Llama(quantized_llama::ModelWeights),
}

impl Weights {
    fn forward(&mut self, x: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        match self {
            Weights::Qwen2(m) => m.forward(x, pos),
            Weights::Llama(m) => m.forward(x, pos),
        }
    }
    fn clear(&mut self) {
        match self {
            Weights::Qwen2(m) => m.clear_kv_cache(),
            Weights::Llama(m) => m.clear_kv_cache(),
        }
    }
}

/// A loaded GGUF decoder.
pub struct GgufModel {
    weights: Weights,
    tokenizer: Arc<GgufTokenizer>,
    template: ChatTemplate,
    info: ModelInfo,
    device: Device,
}

fn load_err(path: &Path, reason: impl std::fmt::Display) -> BackendError {
    BackendError::Load {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl GgufModel {
    /// Loads the model, its tokenizer and its chat template from one GGUF file.
    pub fn load(path: &Path, opts: GgufOptions) -> Result<Self, BackendError> {
        let device = select_device(opts.cuda)?;
        let mut file = File::open(path).map_err(|e| load_err(path, e))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| load_err(path, format!("not a valid GGUF file ({e})")))?;
        let architecture = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let meta_u32 = |key: &str| {
            content
                .metadata
                .get(key)
                .and_then(|v| v.to_u32().ok())
                .map(|v| v as usize)
        };
        let context_length = meta_u32(&format!("{architecture}.context_length")).unwrap_or(2048);
        let tokenizer = tokenizer_from_gguf(&content).map_err(|e| load_err(path, e))?;
        let template = ChatTemplate::new(tokenizer.chat_template.clone());
        let (family, weights) = match architecture.as_str() {
            "qwen2" => (
                "gguf-qwen2",
                Weights::Qwen2(
                    quantized_qwen2::ModelWeights::from_gguf(content, &mut file, &device)
                        .map_err(|e| load_err(path, e))?,
                ),
            ),
            "llama" => (
                "gguf-llama",
                Weights::Llama(
                    quantized_llama::ModelWeights::from_gguf(content, &mut file, &device)
                        .map_err(|e| load_err(path, e))?,
                ),
            ),
            other => {
                return Err(BackendError::UnsupportedArchitecture {
                    path: path.display().to_string(),
                    architecture: other.to_string(),
                })
            }
        };
        let id = opts.id.unwrap_or_else(|| {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string())
        });
        Ok(Self {
            weights,
            tokenizer: Arc::new(tokenizer),
            template,
            info: ModelInfo {
                id,
                revision: opts.revision.unwrap_or_else(|| "local".into()),
                family: family.to_string(),
                context_length,
                target_languages: opts.target_languages,
            },
            device,
        })
    }

    /// Renders the prompt. Text that looks like a chat-control token (`<|im_end|>`)
    /// is broken up first (`< |im_end|>`), so an article cannot end the user's turn.
    fn render(&self, messages: &[ChatMessage]) -> Result<String, BackendError> {
        let safe: Vec<ChatMessage> = messages
            .iter()
            .map(|m| ChatMessage {
                role: m.role,
                content: m.content.replace("<|", "< |"),
            })
            .collect();
        self.template.render(&safe)
    }

    fn generate_one(
        &mut self,
        request: &GenerationRequest,
        on_token: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<Generation, BackendError> {
        let prompt = self.render(&request.messages)?;
        let prompt_ids = self
            .tokenizer
            .encode(&prompt)
            .map_err(|e| BackendError::Prompt(e.to_string()))?;
        let params = &request.params;
        if prompt_ids.len() + params.max_new_tokens > self.info.context_length {
            return Err(BackendError::ContextOverflow {
                prompt_tokens: prompt_ids.len(),
                max_new_tokens: params.max_new_tokens,
                context_length: self.info.context_length,
            });
        }
        self.weights.clear();
        let mut sampler = Sampler::new(params);
        let mut generated: Vec<u32> = Vec::new();
        let mut text = IncrementalText::new();
        let mut finish = FinishReason::Length;
        let input = Tensor::new(prompt_ids.as_slice(), &self.device)?.unsqueeze(0)?;
        let mut logits = self.weights.forward(&input, 0)?.squeeze(0)?;
        while generated.len() < params.max_new_tokens {
            let next = sampler.next(&logits, &generated)?;
            if self.tokenizer.stop_ids.contains(&next) {
                finish = FinishReason::Stop;
                break;
            }
            generated.push(next);
            if params.loop_guard {
                if let Some(keep) = loop_cut(&generated) {
                    generated.truncate(keep);
                    finish = FinishReason::Loop;
                    break;
                }
            }
            let decoded = self
                .tokenizer
                .decode(&generated)
                .map_err(|e| BackendError::Runtime(e.to_string()))?;
            if let Some(piece) = text.push(&decoded) {
                if on_token(&piece) == Flow::Stop {
                    finish = FinishReason::Cancelled;
                    break;
                }
            }
            if generated.len() == params.max_new_tokens {
                break;
            }
            let input = Tensor::new(&[next], &self.device)?.unsqueeze(0)?;
            logits = self
                .weights
                .forward(&input, prompt_ids.len() + generated.len() - 1)?
                .squeeze(0)?;
        }
        self.weights.clear();
        let out = self
            .tokenizer
            .decode(&generated)
            .map_err(|e| BackendError::Runtime(e.to_string()))?;
        Ok(Generation {
            text: out.trim().to_string(),
            prompt_tokens: prompt_ids.len(),
            generated_tokens: generated.len(),
            finish,
        })
    }
}

impl Backend for GgufModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn token_counter(&self) -> TokenCounter {
        let tok = Arc::clone(&self.tokenizer);
        Arc::new(move |text: &str| {
            tok.encode(text)
                .map(|ids| ids.len())
                .map_err(|e| BackendError::Prompt(e.to_string()))
        })
    }

    fn prompt_tokens(&self, messages: &[ChatMessage]) -> Result<usize, BackendError> {
        let prompt = self.render(messages)?;
        self.tokenizer
            .encode(&prompt)
            .map(|ids| ids.len())
            .map_err(|e| BackendError::Prompt(e.to_string()))
    }

    fn generate(
        &mut self,
        requests: &[GenerationRequest],
        on_token: &mut dyn FnMut(usize, &str) -> Flow,
    ) -> Vec<Result<Generation, BackendError>> {
        // One sequence at a time for now; batched decoding is the LLM-speed issue's.
        requests
            .iter()
            .enumerate()
            .map(|(i, req)| self.generate_one(req, &mut |piece| on_token(i, piece)))
            .collect()
    }
}

#[cfg(feature = "cuda")]
fn select_device(cuda: bool) -> Result<Device, BackendError> {
    if cuda {
        Device::new_cuda(0).map_err(|e| BackendError::Runtime(format!("no CUDA device: {e}")))
    } else {
        Ok(Device::Cpu)
    }
}

#[cfg(not(feature = "cuda"))]
fn select_device(cuda: bool) -> Result<Device, BackendError> {
    if cuda {
        Err(BackendError::Runtime(
            "this build of precis has no CUDA support; rebuild with `--features cuda`".into(),
        ))
    } else {
        Ok(Device::Cpu)
    }
}

/// The model's chat template (Jinja, from GGUF metadata), or ChatML when the file has none.
pub struct ChatTemplate {
    source: Option<String>,
}

impl ChatTemplate {
    /// Wraps the template text from `tokenizer.chat_template`.
    pub fn new(source: Option<String>) -> Self {
        Self { source }
    }

    /// Renders the conversation with a generation prompt for the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, BackendError> {
        let Some(source) = &self.source else {
            return Ok(chatml(messages));
        };
        let mut env = minijinja::Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        let tmpl = env
            .template_from_str(source)
            .map_err(|e| BackendError::Prompt(format!("chat template does not parse: {e}")))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => "",
            eos_token => "",
        })
        .map_err(|e| BackendError::Prompt(format!("chat template failed: {e}")))
    }
}

/// The ChatML layout used by Qwen2.5 and SmolLM2.
pub fn chatml(messages: &[ChatMessage]) -> String {
    let mut out = String::new();
    for m in messages {
        let role = match m.role {
            super::Role::System => "system",
            super::Role::User => "user",
            super::Role::Assistant => "assistant",
        };
        out.push_str("<|im_start|>");
        out.push_str(role);
        out.push('\n');
        out.push_str(&m.content);
        out.push_str("<|im_end|>\n");
    }
    out.push_str("<|im_start|>assistant\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_layout() {
        let s = chatml(&[ChatMessage::system("S"), ChatMessage::user("U")]);
        assert_eq!(
            s,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn jinja_template_renders_like_chatml() {
        let t = ChatTemplate::new(Some(
            "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}".into(),
        ));
        let msgs = [ChatMessage::system("S"), ChatMessage::user("U")];
        assert_eq!(t.render(&msgs).unwrap(), chatml(&msgs));
    }

    #[test]
    fn broken_template_is_an_error_not_a_panic() {
        let t = ChatTemplate::new(Some("{% for x in %}".into()));
        assert!(matches!(
            t.render(&[ChatMessage::user("U")]),
            Err(BackendError::Prompt(_))
        ));
    }
}
