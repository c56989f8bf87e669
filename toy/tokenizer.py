"""A byte-level BPE tokenizer trained locally on a small corpus generated in code.

Byte-level means every UTF-8 string encodes (there is no unknown token) and decodes back to
itself. Encoding with ``add_special_tokens=True`` prepends ``<|bos|>`` and never appends
``<|eos|>``: whoever builds a completion appends EOS to it.

The chat template renders BOS itself (as Llama-family templates do), so text rendered by it is
encoded with ``add_special_tokens=False``, which is what ``apply_chat_template`` does. Turns are
``<|role|>\\n{content}``; a system or user turn ends with ``\\n``, an assistant turn with
``<|eos|>``. The generation prompt is ``<|assistant|>\\n``, so a conversation rendered with
its assistant answer starts with the prompt rendered with the generation prompt, and the rest is
the answer followed by EOS.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLES = ("system", "user", "assistant")
# Order fixes the ids: <|bos|> = 0, <|eos|> = 1, <|pad|> = 2, then the role markers.
SPECIAL_TOKENS = (BOS, EOS, PAD, *(f"<|{role}|>" for role in ROLES))
VOCAB_SIZE = 512

CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('message role must be system, user or assistant, got '"
    " ~ message['role']) -}}"
    "{%- endif -%}"
    "{{- '<|' ~ message['role'] ~ '|>\\n' ~ message['content'] -}}"
    "{%- if message['role'] == 'assistant' -%}{{- eos_token -}}"
    "{%- else -%}{{- '\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)

_WORD_TEXT = (
    "the a an and or but if then so because while when where what which who how why this that "
    "these those it is are was were be been being have has had do does did can could will would "
    "should may might must not no yes all some many few more most less each every other another "
    "i you he she we they me him her us them my your his its our their mine yours "
    "cat dog bird fish horse tree river mountain city house garden road train ship book letter "
    "water fire stone light shadow morning evening night summer winter spring autumn year day "
    "time people child mother father friend teacher student doctor farmer king queen "
    "number answer question problem reason example story idea word sentence language model "
    "walk run read write speak listen think know learn teach build open close find give take "
    "make see look help move play start stop turn bring keep hold carry follow count add "
    "small large little big long short old new young good bad happy quiet loud bright dark "
    "warm cold quick slow early late true false simple clear careful strange easy hard "
    "red green blue white black yellow first second third last next always never often "
    "today tomorrow yesterday here there very quite only also again still just almost "
    "please thanks thank hello goodbye sorry sure okay of in on at to from with by for about "
    "over under between into through after before around near far up down out off "
    "system user assistant reply message helpful harmless honest"
)
_WORDS = _WORD_TEXT.split()
_NON_ASCII = ("café", "naïve", "über", "smörgåsbord", "façade", "déjà", "résumé", "Ω", "π", "€")
_PUNCT = (".", ".", ".", "?", "!", ",", ";", ":")


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 14))]
    if rng.random() < 0.1:
        words.insert(rng.randrange(len(words)), rng.choice(_NON_ASCII))
    if rng.random() < 0.3:
        words[0] = words[0].capitalize()
    for _ in range(rng.randint(0, 2)):
        i = rng.randrange(1, len(words))
        words[i] = words[i] + ","
    if rng.random() < 0.1:
        words.insert(rng.randrange(len(words)), f'"{rng.choice(_WORDS)}"')
    return " ".join(words) + rng.choice(_PUNCT)


def _arithmetic(rng: random.Random) -> str:
    a, b = rng.randint(0, 999), rng.randint(0, 99)
    op = rng.choice("+-*")
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return f"{a} {op} {b} = {value}"


def _chat_turns(rng: random.Random) -> str:
    turns = []
    for role in ("system", "user", "assistant"):
        body = _arithmetic(rng) if rng.random() < 0.3 else _sentence(rng)
        turns.append(f"{role}: {body}")
    return "\n".join(turns)


def build_corpus(seed: int = 0, n_lines: int = 4000) -> list[str]:
    """Deterministic training text: sentences, sums, chat-shaped lines, digits and symbols."""
    rng = random.Random(seed)
    lines = [
        "0 1 2 3 4 5 6 7 8 9 0123456789",
        "+ - * / = < > ( ) [ ] { } % & # @ $ ^ ~ | \\ _ ' \" ` . , ; : ! ?",
        "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    ]
    makers = (_sentence, _sentence, _sentence, _arithmetic, _chat_turns)
    while len(lines) < n_lines:
        paragraph = [rng.choice(makers)(rng) for _ in range(rng.randint(1, 3))]
        lines.append(rng.choice((" ", "\n", "\n\n")).join(paragraph))
    return lines


def train_tokenizer(seed: int = 0, vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """Train the byte-level BPE on ``build_corpus(seed)``; ids 0.. are ``SPECIAL_TOKENS``."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(build_corpus(seed), trainer=trainer)
    if tokenizer.get_vocab_size() != vocab_size:
        raise RuntimeError(
            f"BPE training reached {tokenizer.get_vocab_size()} tokens, not vocab_size="
            f"{vocab_size}: lower vocab_size or enlarge the corpus in build_corpus"
        )

    # BOS in front of every encoded text (and of each text of a pair); EOS never appended.
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)]
    )
    return tokenizer


def wrap_tokenizer(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """The transformers view of a trained tokenizer: special tokens and the chat template."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(SPECIAL_TOKENS[3:]),
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
        padding_side="right",
    )


def build_tokenizer(out_dir: str | Path, *, seed: int = 0) -> Path:
    """Train the toy tokenizer on the corpus of ``seed`` and save it to ``out_dir``.

    The files are a pure function of ``seed``: same seed, byte-identical files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wrap_tokenizer(train_tokenizer(seed)).save_pretrained(out_dir)
    logger.info("saved toy tokenizer (seed %s) to %s", seed, out_dir)
    return out_dir
