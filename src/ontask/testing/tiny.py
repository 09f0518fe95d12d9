"""Tiny random causal LMs built in code, so tests never download anything.

`make_tiny_model(dir)` trains a small byte-level BPE tokenizer on a fixed corpus, attaches
a ChatML-style chat template, builds a random Llama of a few thousand parameters per layer
(seeded), and saves both as a normal transformers folder usable as `hf:DIR`.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "Summarise the meeting notes in three bullet points.",
    "Rewrite the email below in a friendly tone and keep it short.",
    "Translate the sentence into French. The weather is nice today.",
    "Classify the review as positive or negative: I loved the product!",
    "Write a haiku about autumn leaves falling on a quiet river.",
    "Reply to the customer: my order #1234 arrived damaged, what can I do?",
    "List the steps to reset a password, numbered, at most five steps.",
    "The quick brown fox jumps over the lazy dog 0123456789 ,.;:!?'\"()[]{}",
]


def make_tiny_model(out_dir: str | Path, *, seed: int = 0, layers: int = 2, hidden: int = 32, vocab: int = 400) -> Path:
    """Create (or reuse) a tiny random Llama + tokenizer folder and return its path."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<|im_start|>")
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).float()
    with torch.no_grad():  # larger weights than the default init, so log-probs vary by input
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
