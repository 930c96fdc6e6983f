# Regenerates tests/data/tok_*: small byte-level BPE tokenizers trained with HF `tokenizers` on the
# fortune texts, and the ids HF `tokenizers` gives for test texts (also for variants of the
# Llama-2 tokenizer.json that test_tokenizer.c derives from the fixture). Not needed to run tests.
import json, os, sys
from tokenizers import Tokenizer, models, trainers, pre_tokenizers, decoders, processors, normalizers, Regex

FX = sys.argv[1] if len(sys.argv) > 1 else "../shared/fixtures"
texts = [json.loads(l)["text"] for l in open(f"{FX}/tokenize_public.jsonl")]
LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
extra = ["Hello, world!", "  leading spaces", "trailing spaces   ", "tabs\tand\nnewlines\r\n\r\nend",
         "I'm sure it's 12345678 o'clock, WE'LL SEE'S", "naïve café — “quotes” … ½ ² Ⅻ", "日本語のテキスト、中文文本。",
         "emoji 😀👍🏽 and ZWJ 👨‍👩‍👧", "Ελληνικά και русский текст", "x  y   z    \n\n  \t w", "<|eot_id|>hi<|eot_id|>",
         "a<|endoftext|>b <|im_start|>user\nhey<|im_end|>", "numbers 1 12 123 1234 12345 ٣٤٥ ①②", "'s 'S 'T 'Re", "",
         " ", "\n", "!!!???...", "http://example.com/a?b=c&d=e#f", "$100.50, 3.14159, -42, 1e10",
         "cafe\u0301 A\u030a\u0301 a\u0323\u0302 \u1100\u1161\u11a8 \u212b \u0958 n\u0303o"]
tests = texts[::25] + extra

def train(pre, specials, vocab=700, ignore_merges=False, norm=None):
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if norm: tok.normalizer = norm
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, tr)
    bos = specials[0]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    return tok

toks = {
    "llama3": train(pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3), "isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
                    ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"], ignore_merges=True),
    "gpt2": train(pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
                  ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
    "qwen2": train(pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2), "isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
                   ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], norm=normalizers.NFC()),
}
for name, tok in toks.items():
    os.makedirs(f"tests/data/tok_{name}", exist_ok=True)
    tok.save(f"tests/data/tok_{name}/tokenizer.json")
    with open(f"tests/data/tok_{name}/expected.jsonl", "w") as f:
        for t in tests:
            ids = tok.encode(t).ids
            f.write(json.dumps({"text": t, "ids": ids, "decoded": tok.decode(ids)}, ensure_ascii=False) + "\n")

# Llama-2 tokenizer.json variants (the C test builds them from the fixture by swapping components)
base = json.load(open(f"{FX}/llama2-tokenizer/tokenizer.json"))
variants = {
    "legacy": {"normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}, "pre_tokenizer": None},
    "first_split": {"pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": True}},
    "never": {"pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "never", "split": False},
              "decoder": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "never", "split": False}},
}
vt = texts[::40] + extra + ["<s>x</s> y<unk>z", "</s>", "a</s>b"]
with open("tests/data/llama2_variants.jsonl", "w") as f:
    for name, patch in variants.items():
        d = dict(base); d.update(patch)
        tok = Tokenizer.from_str(json.dumps(d))
        for t in vt:
            ids = tok.encode(t).ids
            f.write(json.dumps({"variant": name, "text": t, "ids": ids, "decoded": tok.decode(ids)}, ensure_ascii=False) + "\n")
