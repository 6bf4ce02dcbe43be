"""The folders tagtune reads and writes, and the names of the files in them: defined here, once.

    model folder      official IndexTTS 1.0/1.5 layout; a tagtune export or `tags add` folder adds tags and rows
      config.yaml  gpt.pth  dvae.pth  bigvgan_generator.pth  bpe.model
      tags.json  tag_init.safetensors  provenance.json                     (tag-extended folders only)
    IndexTTS-2 folder official layout (read only)
      config.yaml  gpt.pth  s2mel.pth  bpe.model  wav2vec2bert_stats.pt  feat1.pt  feat2.pt  [qwen0.6bemo4-merge/]
      hf_cache/  w2v-bert-2.0/  semantic_codec_model.safetensors  campplus_cn_common.bin  bigvgan/
                 (or a Hugging Face hub cache: models--facebook--w2v-bert-2.0/snapshots/..., ...)
    adapter folder    PEFT format, applied on top of its base model folder
      adapter_config.json  adapter_model.safetensors  tagtune_adapter.json  README.md  bpe.model  tags.json
      tag_init.safetensors  provenance.json
    run folder        `tagtune train`
      run.json  train_config.yaml  bpe.model  tags.json  tag_init.safetensors
      checkpoints/  best/  last/  samples/  metrics.jsonl  metrics.csv  loss_curve.png  tensorboard/
    data folder       `tagtune prepare`
      manifest.json  examples.jsonl  rejected.jsonl  shards/  bpe.model  tags.json

The names of files a model folder's ``config.yaml`` points to (gpt, dvae, vocoder, tokenizer) come from the
config; the names here are the defaults tagtune writes. Each ``*Folder`` class gives the paths of one kind of
folder and touches no file itself; ``tagtune.loaders`` reads model and adapter folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

CONFIG_FILE = "config.yaml"
GPT_FILE = "gpt.pth"
TOKENIZER_FILE = "bpe.model"
TAGS_FILE = "tags.json"
START_ROWS_FILE = "tag_init.safetensors"  # the untrained tag rows a run started from
PROVENANCE_FILE = "provenance.json"

# IndexTTS2 auxiliary models, named as the official downloader stores them
SEMANTIC_CODEC_FILE = "semantic_codec_model.safetensors"  # MaskGCT semantic codec
CAMPPLUS_FILE = "campplus_cn_common.bin"  # CAMPPlus style encoder (a bare state dict)
BIGVGAN_V2_CONFIG_FILE = "config.json"  # in the BigVGAN v2 folder
BIGVGAN_V2_WEIGHTS_FILE = "bigvgan_generator.pt"  # {'generator': state dict}, weight-norm form
W2V_BERT_DIR = "w2v-bert-2.0"  # w2v-BERT 2.0 in the Hugging Face layout (config, weights, feature extractor)
W2V_BERT_CONFIG_FILE = "config.json"  # in the w2v-BERT folder
W2V_BERT_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")  # what from_pretrained reads
AUX_MODELS_DIR = "hf_cache"  # in an IndexTTS-2 folder: the auxiliary models (flat, or a Hugging Face hub cache)
BIGVGAN_V2_DIR = "bigvgan"  # BigVGAN v2 in the flat auxiliary layout
QWEN_EMOTION_CONFIG_FILE = "config.json"  # in the QwenEmotion folder (``qwen_emo_path`` of config.yaml)
# the Hugging Face repositories the official code downloads them from, and the file inside each
W2V_BERT_REPO = "facebook/w2v-bert-2.0"
SEMANTIC_CODEC_REPO, SEMANTIC_CODEC_REPO_FILE = "amphion/MaskGCT", "semantic_codec/model.safetensors"
CAMPPLUS_REPO = "funasr/campplus"  # file: CAMPPLUS_FILE
# BigVGAN v2's repository is ``vocoder.name`` of config.yaml (nvidia/bigvgan_v2_22khz_80band_256x)

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_META_FILE = "tagtune_adapter.json"  # tag names and ids, mode, base fingerprint, step
ADAPTER_CARD_FILE = "README.md"  # the model card: base, tags and ids, rank, how to load it
FULL_WEIGHTS_FILE = "gpt.safetensors"  # a full fine-tuning run's weights folder holds these instead

RUN_INFO_FILE = "run.json"
RECIPE_FILE = "train_config.yaml"
CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
LAST_DIR = "last"
SAMPLES_DIR = "samples"
SAMPLE_INDEX_FILE = "index.json"  # a samples folder's list of its wavs: file, model, voice, text, seed
SAMPLE_INDEX_MD_FILE = "index.md"  # the same list as a table a person reads
WEIGHTS_CHOICES = (BEST_DIR, LAST_DIR)

MANIFEST_FILE = "manifest.json"
EXAMPLES_FILE = "examples.jsonl"
REJECTED_FILE = "rejected.jsonl"
SHARDS_DIR = "shards"

DEFAULT_RECIPE = "lora.yaml"


def shipped_base() -> Path:
    """The tiny base model that ships with tagtune (official layout; rebuilt by ``python -m tagtune.tiny.build``)."""
    return Path(str(resources.files("tagtune") / "assets" / "tiny-base"))


def shipped_base_v2() -> Path:
    """The tiny IndexTTS-2 base that ships with tagtune (official IndexTTS-2 layout, ``hf_cache/`` included)."""
    return Path(str(resources.files("tagtune") / "assets" / "tiny-base-v2"))


def shipped_recipe(name: str = DEFAULT_RECIPE) -> Path:
    """A training recipe that ships with tagtune (``configs/``)."""
    return Path(str(resources.files("tagtune") / "configs" / name))


EVENT_MAP_FILE = "event-map.yaml"  # tag -> AudioSet classes the events judge listens for
PROMPT_SUITES = {"en": "judges-en.txt", "zh": "judges-zh.txt"}  # the judged prompt suite, per language


def shipped_event_map() -> Path:
    """The shipped tag -> AudioSet class map of the events judge (``assets/judges/``)."""
    return Path(str(resources.files("tagtune") / "assets" / "judges" / EVENT_MAP_FILE))


def shipped_prompts() -> list[Path]:
    """The shipped prompt suite files, one per language (``assets/prompts/``)."""
    return [Path(str(resources.files("tagtune") / "assets" / "prompts" / name)) for name in PROMPT_SUITES.values()]


@dataclass(frozen=True)
class TaggedFolder:
    """What every folder that carries a tag vocabulary holds beside its weights."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def tokenizer(self) -> Path:
        return self.root / TOKENIZER_FILE

    @property
    def tags(self) -> Path:
        return self.root / TAGS_FILE

    @property
    def start_rows(self) -> Path:
        return self.root / START_ROWS_FILE

    @property
    def provenance(self) -> Path:
        return self.root / PROVENANCE_FILE


@dataclass(frozen=True)
class ModelFolder(TaggedFolder):
    """An IndexTTS model folder: official, or written by ``tagtune export`` / ``tagtune tags add``."""

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE


@dataclass(frozen=True)
class AdapterFolder(TaggedFolder):
    """A PEFT adapter folder (``tagtune export --adapter-only``, or a run's ``best``/``last``)."""

    @property
    def config(self) -> Path:
        return self.root / ADAPTER_CONFIG_FILE

    @property
    def weights(self) -> Path:
        return self.root / ADAPTER_WEIGHTS_FILE

    @property
    def meta(self) -> Path:
        return self.root / ADAPTER_META_FILE

    @property
    def full_weights(self) -> Path:
        return self.root / FULL_WEIGHTS_FILE


@dataclass(frozen=True)
class RunFolder(TaggedFolder):
    """A training run."""

    @property
    def info(self) -> Path:
        return self.root / RUN_INFO_FILE

    @property
    def recipe(self) -> Path:
        return self.root / RECIPE_FILE

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    @property
    def samples(self) -> Path:
        return self.root / SAMPLES_DIR

    def weights(self, which: str) -> AdapterFolder:
        """The release weights ``which`` ("best" or "last")."""
        return AdapterFolder(self.root / which)


@dataclass(frozen=True)
class DataFolder(TaggedFolder):
    """A prepared corpus."""

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_FILE

    @property
    def examples(self) -> Path:
        return self.root / EXAMPLES_FILE

    @property
    def rejected(self) -> Path:
        return self.root / REJECTED_FILE

    @property
    def shards(self) -> Path:
        return self.root / SHARDS_DIR
