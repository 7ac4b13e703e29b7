"""Fixed vocabularies the task generators draw from (written for this project, no corpora).

Everything here is deterministic: hand-written word lists, a bank of essay-like sentences made
from them by a fixed-seed grammar, and pronounceable pseudo-words ("coded words") made from a
fixed-seed syllable generator. None of it contains digits, so a 7-digit needle value is the only
number in a haystack.
"""

import functools

import numpy as np

NOUNS = """
apple river mountain garden window forest table letter candle bridge castle harbor island
kettle ladder meadow mirror needle orchard pencil pocket rabbit saddle shadow shelter
silver spider statue stone storm street summer sunset teacher thunder ticket tiger tower
tunnel valley village wagon wallet winter wizard wolf yard anchor arrow basket blanket
bottle bucket cabin camera canyon carpet cattle cellar chimney circle cloud coffee comet
compass cottage crystal curtain desert diamond dinner dragon drum eagle engine feather
fence field flower fountain fox frog glacier glove goat guitar hammer helmet hill horse
jacket jungle kitten lantern lemon lion lizard market meteor monkey moon museum nest
ocean owl palace parrot pebble pepper piano pillow pirate planet pond puzzle quilt
rainbow robot rocket sailor salmon sandal scarf school shell ship shovel singer sparrow
spoon squirrel stable star station sugar swan sword thread thumb tomato train turtle
umbrella violin volcano walnut whale whistle willow wind wire word zebra acorn badger
barrel beacon berry biscuit blossom bonnet boulder bramble breeze brook butter button
canal carrot cedar cherry clover copper cricket crown dolphin donkey falcon ferry fiddle
flute garlic ginger granite gravel hazel hedge heron honey iris ivory jasmine juniper
kayak kernel lagoon lily magnet maple marble mitten moss mustard nutmeg oak olive onion
otter oyster paddle pansy peach pelican pine plum poppy prairie quartz raven reed ribbon
saffron sage satchel sparrow spruce thistle thimble timber tulip velvet walrus wheat
""".split()

ADJECTIVES = """
quiet bright ancient gentle brave clever curious distant eager famous fierce fragile
golden green hidden hollow honest humble lazy little lonely loud lucky narrow noble odd
pale patient polite proud rapid rare restless rough round rusty sharp shiny silent simple
sleepy slow small smooth soft solid steady strange strong sudden sweet tall tender tiny
tired warm weary wide wild wise wooden young bold calm cheerful chilly crooked dusty empty
faint fancy friendly frozen fuzzy gloomy grand heavy jolly kind light mellow misty muddy
nervous orange purple quick rosy salty sandy scarlet shallow shy sturdy sunny thick
""".split()

VERBS = """
found carried painted followed watched opened visited borrowed repaired cleaned noticed
admired remembered counted measured collected gathered dropped lifted pushed pulled
polished planted wrapped hid chased greeted crossed climbed described mended folded
traded questioned studied ignored praised guarded delivered shared built sold bought
""".split()

_TEMPLATES = (
    "The {a} {n} {v} the {n2} near the {n3}.",
    "Every {n} {v} a {a} {n2} before the {n3} arrived.",
    "Nobody could say why the {n} seemed so {a}.",
    "We {v} the {n} and later {v2} the {n2}.",
    "A {a} {n} is often better than a {a2} {n2}.",
    "My {n} {v} a {n2} while the {n3} was away.",
    "Some people think the {n} is {a}, but others find it {a2}.",
    "After a long day, the {n} {v} the {n2} once more.",
    "There was a {a} {n} by the {n2}, and it {v} everyone.",
    "It is hard to explain how a {n} can be so {a}.",
    "Every {n} needs a {n2} and a little {n3}.",
    "They {v} the {a} {n} because the {n2} was {a2}.",
    "Long ago, a {a} {n} lived beside a {a2} {n2}.",
    "The {n2} was {a}, so the {n} {v} it with care.",
)

# The PFlash benchmark's haystack: one short paragraph repeated, one unit per sentence.
PFLASH_FILLER = (
    "The lake is calm.",
    "The hills are green.",
    "The wind is soft.",
    "On we go.",
    "Far away and home again.",
)

ESSAY_BANK_SIZE = 4096
PSEUDO_BANK_SIZE = 20000
_CONSONANTS = list("bdfgklmnprstvz") + ["ch", "sh", "th", "br", "tr", "gl"]
_VOWELS = list("aeiou") + ["ai", "ou", "ee"]


@functools.cache
def essay_sentences() -> tuple[str, ...]:
    """ESSAY_BANK_SIZE grammatical filler sentences from a fixed seed (same on every machine)."""
    rng = np.random.default_rng(20261126)

    def pick(words):
        return words[rng.integers(len(words))]

    out = []
    for _ in range(ESSAY_BANK_SIZE):
        t = _TEMPLATES[rng.integers(len(_TEMPLATES))]
        out.append(
            t.format(
                n=pick(NOUNS),
                n2=pick(NOUNS),
                n3=pick(NOUNS),
                a=pick(ADJECTIVES),
                a2=pick(ADJECTIVES),
                v=pick(VERBS),
                v2=pick(VERBS),
            )
        )
    return tuple(out)


@functools.cache
def real_words() -> tuple[str, ...]:
    """The distinct hand-written words (nouns then adjectives), in a fixed order."""
    return tuple(dict.fromkeys(NOUNS + ADJECTIVES))


@functools.cache
def pseudo_words() -> tuple[str, ...]:
    """PSEUDO_BANK_SIZE distinct pronounceable nonsense words, disjoint from the real words."""
    rng = np.random.default_rng(7)
    taken = set(real_words()) | set(VERBS)
    out: dict[str, None] = {}
    while len(out) < PSEUDO_BANK_SIZE:
        n_syl = 2 + int(rng.integers(2))
        w = "".join(
            _CONSONANTS[rng.integers(len(_CONSONANTS))] + _VOWELS[rng.integers(len(_VOWELS))]
            for _ in range(n_syl)
        )
        if rng.random() < 0.3:
            w += _CONSONANTS[rng.integers(14)]  # single-letter consonants only at the end
        if w not in taken:
            out[w] = None
    return tuple(out)
