"""Synthetic tagged speech corpora: speech from espeak-ng/flite/built-in babble with
procedural giggles, laughs and sighs spliced in at the tag positions."""

from tagtune.synthetic.corpus import DEFAULT_TAGS, SAMPLE_RATE, CorpusInfo, generate_corpus, make_plans
from tagtune.synthetic.events import EVENT_KINDS, TAG_KINDS, make_event
from tagtune.synthetic.voices import VOICES, Voice, engine_available
from tagtune.synthetic.writers import EventSegment, event_segments

__all__ = [
    "DEFAULT_TAGS", "EVENT_KINDS", "SAMPLE_RATE", "TAG_KINDS", "VOICES",
    "CorpusInfo", "EventSegment", "Voice",
    "engine_available", "event_segments", "generate_corpus", "make_event", "make_plans",
]
