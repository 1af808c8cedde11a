"""English-like synthetic prose in three registers, for the generators of text that curation judges.

Sentences are templates filled from short word lists, so text reads as English to language ID and
its quality is known by construction: :func:`encyclopedic_paragraph` writes the way the synthetic
Wikipedia articles do (a quality model trained on them finds it likely), :func:`web_paragraph`
like a travel blog (plain English, another vocabulary), :func:`spam_paragraph` keyword-stuffed
advertising (English words, unlikely word order). Place and people names are coined from
syllables, so two paragraphs rarely share a line. Deterministic for the ``rng`` it is given.
"""

from __future__ import annotations

import random

SYLLABLES = "ka lo mi nu pe ra si to va ze bri dan fel gor hul mor nes pil rut sam tev".split()

KINDS = ["town", "village", "castle", "monastery", "harbour", "valley", "island", "market town", "abbey", "fortress"]
ADJECTIVES = ["small", "old", "large", "quiet", "ancient", "busy", "remote", "coastal", "rural", "fortified"]
DIRECTIONS = ["northern", "southern", "eastern", "western", "central"]
PEOPLE = ["merchants", "monks", "farmers", "fishermen", "settlers", "miners", "weavers", "soldiers"]
STRUCTURES = ["church", "bridge", "tower", "town hall", "mill", "school", "harbour wall", "market hall"]
MATERIALS = ["stone", "timber", "brick", "granite", "limestone"]
INDUSTRIES = ["fishing", "farming", "tourism", "wool trade", "salt mining", "shipbuilding", "forestry"]
VERBS = ["built", "founded", "rebuilt", "enlarged", "restored", "fortified", "sold", "abandoned"]
CLIMATES = [("mild", "wet"), ("warm", "cold"), ("dry", "long"), ("short", "snowy")]
FIELDS = ["painting", "medicine", "astronomy", "music", "law", "poetry", "engineering"]

ENCYCLOPEDIC = [
    "{name} is {a_adj} {kind} in the {direction} part of {region}.",
    "It was founded by {people} from {other} in {year}.",
    "The {structure} was built of {material} in {year} and restored in {later}.",
    "According to the census of {later}, the population was {number}.",
    "The {kind} lies on the {direction} bank of the {other} river, about {small} kilometres from {region}.",
    "In {year} the {people} of the region {verb} {a_adj} {structure} near the {kind}.",
    "Its economy depends mainly on {industry} and {industry2}.",
    "In {later} a fire destroyed most of the {structure}, which was later {verb} by the {people}.",
    "Several people from {name} became known for their work in {field}.",
    "The climate is {climate}, with {summer} summers and {winter} winters.",
    "The {structure} of {name} is one of the oldest buildings in {region}.",
    "During the war of {year} the {kind} was held by soldiers from {other} for {small} years.",
    "The first school of {name} opened in {later}, and a railway line to {other} followed in {railway}.",
    "Most of the {people} who lived there in {year} came from the {direction} valleys of {region}.",
    "A {material} {structure} from the time of {other} the Elder still stands beside the {kind}.",
    "The local {people} were known for their {industry} until the {later} crisis.",
    "{name} has been twinned with {other} since {railway}.",
    "The {kind} is governed by a council of {small} members elected every {few} years.",
    "Its coat of arms shows a {material} {structure} above the {other} river.",
    "Between {year} and {later} the population fell to about {number}.",
]

FOODS = ["pizza", "coffee", "ice cream", "breakfast", "seafood", "pancakes", "street food", "burgers"]
PLACES = ["beach", "old town", "museum", "zoo", "night market", "water park", "harbour", "botanical garden"]
MONTHS = ["January", "March", "May", "June", "July", "August", "October", "December"]
FEELINGS = ["amazing", "a bit crowded", "really relaxing", "totally worth it", "too expensive", "lovely"]

WEB = [
    "We spent {small} days in {other} last {month} and honestly it was {feeling}.",
    "The {food} at the little place next to the {place} was the best we had all week.",
    "If you are planning a trip, book your tickets early because prices go up in {month}.",
    "My kids spent the whole afternoon at the {place} and did not want to leave.",
    "Our hotel was close to the {place}, so we walked everywhere and never needed a taxi.",
    "I would skip the {place} if you only have one day, it was {feeling}.",
    "Do not miss the {food} near the station, we went back {small} times.",
    "Parking in {other} is hard in {month}, so take the bus from the {place} instead.",
    "Let me know in the comments if you have been to {other} and what you thought of it.",
]

PRODUCTS = ["shoes", "watches", "loans", "pills", "sunglasses", "casino bonus", "phone cases", "handbags", "vpn"]
SPAM_WORDS = ["cheap", "best", "discount", "free", "online", "sale", "deal", "top", "buy", "now", "official"]

SPAM = [
    "buy {product} {spam} {product} {spam} {spam} {product} {spam} {product2} {spam} {product2}",
    "{spam} {product} {spam} {spam} {product2} {product2} click here {spam} {product} {spam} {spam}",
    "{Product} {Product} {Product} {spam} {spam} {product2} {spam} {product} {other} {spam} {product}",
    "{spam} {spam} {product} {product2} {spam} {product} {spam} {spam} {product2} {spam} {product}",
]


def coined_name(rng: random.Random) -> str:
    """A capitalised word of 2 to 4 syllables: a name that no word list holds."""
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))).capitalize()


def encyclopedic_paragraph(rng: random.Random, name: str, sentences: int | None = None) -> str:
    return _paragraph(rng, ENCYCLOPEDIC, sentences or rng.randint(6, 10), name=name)


def web_paragraph(rng: random.Random, sentences: int | None = None) -> str:
    return _paragraph(rng, WEB, sentences or rng.randint(2, 4))


def spam_paragraph(rng: random.Random, lines: int | None = None) -> str:
    return _paragraph(rng, SPAM, lines or rng.randint(2, 3))


def _paragraph(rng: random.Random, templates: list[str], count: int, name: str = "") -> str:
    return " ".join(_fill(rng, template, name) for template in rng.sample(templates, count))


def _fill(rng: random.Random, template: str, name: str) -> str:
    year = rng.randrange(1100, 1900)
    summer, winter = rng.choice(CLIMATES)
    industry, industry2 = rng.sample(INDUSTRIES, 2)
    product, product2 = rng.sample(PRODUCTS, 2)
    adjective = rng.choice(ADJECTIVES)
    values = {
        "name": name or coined_name(rng), "other": coined_name(rng), "region": coined_name(rng),
        "a_adj": f"{'an' if adjective[0] in 'aeiou' else 'a'} {adjective}", "kind": rng.choice(KINDS),
        "direction": rng.choice(DIRECTIONS), "people": rng.choice(PEOPLE), "structure": rng.choice(STRUCTURES),
        "material": rng.choice(MATERIALS), "verb": rng.choice(VERBS), "field": rng.choice(FIELDS),
        "industry": industry, "industry2": industry2, "climate": rng.choice(("temperate", "continental", "oceanic")),
        "summer": summer, "winter": winter, "year": year, "later": year + rng.randrange(20, 120),
        "railway": rng.randrange(1840, 2000), "number": f"{rng.randrange(300, 90_000):,}",
        "small": rng.randint(2, 12), "few": rng.randint(3, 6), "food": rng.choice(FOODS),
        "place": rng.choice(PLACES), "month": rng.choice(MONTHS), "feeling": rng.choice(FEELINGS),
        "product": product, "product2": product2, "Product": product.upper(),
    }
    # Each {spam} slot draws its own word, which str.format cannot do.
    pieces = template.split("{spam}")
    stuffed = "".join(piece + rng.choice(SPAM_WORDS) for piece in pieces[:-1]) + pieces[-1]
    return stuffed.format(**values)
