"""Write the distillation prompts and the benchmark prompts (deterministic; run from anywhere).

    python speckv/data/make_prompts.py

Prompts are templates × topics for four tasks (code, continuation, math, dialogue). Topics are split
before templating, so no benchmark prompt shares a topic (or, for math, its numbers) with a training
prompt: acceptance measured on ``bench_*.jsonl`` is held out.

``train_extra.jsonl`` widens the distillation data on the training topics only: the template × language
combinations ``train_prompts.jsonl`` left out, more arithmetic, and the continuation and dialogue prompts once
more with ``"sample": true`` (a second, sampled answer to the same prompt). Drawn from its own random stream,
so the other files do not change. ``train_resample.jsonl`` asks once more, sampled, for every code, continuation
and dialogue prompt of both files (maths is the task the head already drafts best).

``policy_prompts.jsonl`` is for the γ selector's telemetry (``speckv collect``): 36 prompts per task on topics of
their own (neither the draft head's training data nor the benchmark's), so the selector learns how the draft does on
prompts it was not trained on — as in use — and the benchmark stays held out from it too.

Input-grounded tasks, where the answer reuses the prompt's words (what a prompt-lookup drafter turns into free
drafts): ``summarize`` (a passage), ``extract`` (fields of a message or notice, as JSON), ``qa`` (a question on a fact
the passage states) and ``code_edit`` (type hints, docstrings, comments or a rename on a short Python snippet). The
passages (80–250 words) and snippets are written here and combined from fictional towns, people and companies with a
random stream of their own. Every entity list, kind of passage, kind of record and snippet is split three ways before
anything is drawn, and the script asserts that no topic and no prompt is shared: ``train_grounded.jsonl`` (60 per task,
for the draft head), ``policy_grounded.jsonl`` (36 per task, for the selector) and ``bench_{summarize,extract,qa,
code_edit}.jsonl`` (30 each; ``bench_grounded.jsonl`` is all four). ``job_prompts.jsonl`` is ``bench_mix.jsonl``
followed by ``bench_grounded.jsonl``: the batch job's input.
"""

from __future__ import annotations

import ast
import json
import random
import re
import textwrap
from pathlib import Path

HERE = Path(__file__).parent
NUM_BENCH = 30  # per task
SEED = 1234

CODE_TASKS = [
    "reverses a string", "checks whether a number is prime", "returns the n-th Fibonacci number",
    "merges two sorted lists", "counts the vowels in a string", "removes duplicates from a list",
    "finds the largest element in a list", "computes the factorial of n", "checks whether a string is a palindrome",
    "flattens a nested list", "converts Celsius to Fahrenheit", "returns the greatest common divisor of two numbers",
    "sorts a list with bubble sort", "implements binary search", "counts word frequencies in a text",
    "validates an email address", "transposes a matrix", "computes the mean and median of a list",
    "reads a CSV file and prints each row", "generates all permutations of a list", "checks balanced parentheses",
    "converts a decimal number to binary", "finds the second largest number in a list", "capitalizes every word",
    "computes the sum of digits of an integer", "returns the intersection of two lists", "implements a stack class",
    "implements a queue with two stacks", "rotates a list by k positions", "finds the longest common prefix",
    "checks whether two strings are anagrams", "computes the power set of a set", "parses a date string",
    "counts the lines in a file", "implements insertion sort", "finds all primes below n with a sieve",
    "computes the dot product of two vectors", "merges two dictionaries", "returns the mode of a list",
    "chunks a list into pieces of size n", "converts a Roman numeral to an integer", "implements quicksort",
    "computes the edit distance between two strings", "finds the missing number in 1..n", "zips two lists into a dict",
    "computes compound interest", "checks whether a year is a leap year", "finds the longest word in a sentence",
    "implements a linked list", "computes the running total of a list", "encodes a string with a Caesar cipher",
    "counts set bits in an integer", "returns the n largest items of a list", "checks whether a list is sorted",
    "computes the area of a circle", "generates a random password", "implements depth-first search on a graph",
    "implements breadth-first search on a graph", "computes a moving average", "removes whitespace from a string",
    "splits a sentence into words", "computes the least common multiple", "finds duplicate elements in a list",
    "converts a list of strings to integers", "implements a simple LRU cache", "checks whether a number is a power of two",
]
CODE_LANGS = ["Python", "JavaScript", "C", "Rust", "Go", "Java"]
CODE_TEMPLATES = [
    "Write a {lang} function that {task}.",
    "Show me {lang} code that {task}, with a short explanation.",
    "How do I write a function in {lang} that {task}?",
    "Implement a {lang} function which {task}. Add comments.",
]

STORY_SUBJECTS = [
    "an old lighthouse keeper", "a young astronaut", "a stray cat", "a retired detective", "a village baker",
    "a lost robot", "a curious child", "a travelling musician", "a ship captain", "a forest ranger",
    "a small dragon", "a night-shift nurse", "a chess champion", "a street painter", "a beekeeper",
    "a time traveller", "a mountain guide", "a shy librarian", "a farmer", "an inventor", "a postman",
    "a circus acrobat", "a museum guard", "a fisherman", "a kind ghost", "a gardener", "a taxi driver",
    "a deep-sea diver", "a school teacher", "a young wizard", "a clockmaker", "a radio host", "a park ranger",
    "an ice-cream seller", "a desert nomad", "a violin maker", "a train conductor", "a weather forecaster",
    "a tailor", "a beach lifeguard", "a penguin", "an architect", "a hacker", "a knight", "a shepherd",
    "a baker's apprentice", "a zookeeper", "a pilot", "a monk", "a marathon runner", "a poet", "a chef",
]
STORY_OPENINGS = [
    "Continue the story: Once upon a time, {subject} found a mysterious key.",
    "Continue this text: It was raining when {subject} first heard the strange noise.",
    "Write the next paragraph of a story about {subject} who wakes up in an unknown city.",
    "Continue the story: Every morning, {subject} walked the same path, until one day",
    "Continue this story in a few paragraphs: {subject} received a letter with no sender.",
]
ESSAY_TOPICS = [
    "renewable energy", "the history of the internet", "the importance of sleep", "city gardens",
    "learning a second language", "the invention of the printing press", "electric cars", "the water cycle",
    "remote work", "the role of bees in agriculture", "space exploration", "the Roman Empire",
    "healthy breakfast habits", "recycling plastics", "public libraries", "volcanoes", "the human immune system",
    "classical music", "video games", "climate change", "the ocean's tides", "photosynthesis", "social media",
    "ancient Egypt", "artificial intelligence", "coffee", "the Olympic Games", "migratory birds", "chess",
    "the moon landing", "mountain hiking", "vaccines", "the stock market", "earthquakes", "tea ceremonies",
    "bicycles in cities", "the printing of money", "rainforests", "jazz", "the periodic table",
]
ESSAY_TEMPLATES = [
    "Continue this paragraph: {topic_cap} has changed the way people live because",
    "Write a short essay about {topic}.",
    "Continue the text: The most surprising fact about {topic} is",
]

DIALOGUE_TOPICS = [
    "staying motivated while studying", "cooking dinner for friends", "starting to run", "saving money",
    "planning a trip to Japan", "learning to play the guitar", "dealing with a noisy neighbour", "keeping houseplants alive",
    "preparing for a job interview", "getting better sleep", "choosing a first pet", "making new friends in a new city",
    "organizing a birthday party", "reducing screen time", "writing a cover letter", "learning to swim as an adult",
    "moving to a new apartment", "starting a small garden", "reading more books", "public speaking",
    "buying a used car", "meditation for beginners", "working from home", "teaching a child to ride a bike",
    "choosing a laptop", "training a puppy", "baking bread", "handling stress at work", "planning a wedding",
    "learning to draw", "asking for a raise", "packing for a camping trip", "eating more vegetables",
    "keeping a journal", "fixing a leaking tap", "choosing a university", "starting a podcast", "decluttering a room",
    "visiting Paris on a budget", "getting over a cold", "learning chess", "taking better photos with a phone",
    "cycling to work", "hosting a board game night", "writing a short story", "talking to a shy teenager",
]
DIALOGUE_TEMPLATES = [
    "Hi! Can you give me some advice on {topic}?",
    "I'm a bit nervous about {topic}. What do you suggest?",
    "What are three tips for {topic}?",
    "My friend asked me about {topic} and I didn't know what to say. Can you help?",
]

# topics of the selector's prompts only (policy_prompts.jsonl)
POLICY_CODE_TASKS = [
    "counts the words in a file", "reverses the words of a sentence", "checks whether a number is an Armstrong number",
    "returns the index of the minimum of a list", "converts hours and minutes to seconds", "pads a string to width n",
    "computes the triangular number n", "checks whether a matrix is symmetric", "removes every even number from a list",
    "returns the cube of each number in a list", "counts the uppercase letters in a string",
    "finds the median of three",
    "converts kilometres to miles", "checks whether a list has a cycle of indices", "sums the diagonal of a matrix",
    "returns every k-th element of a list", "joins a list of words with commas", "finds the first repeated character",
    "interleaves two lists", "checks whether a string contains only digits", "computes a weighted average",
    "returns the product of a list", "finds the longest run of equal elements", "swaps the keys and values of a dict",
    "replaces the vowels of a string with stars", "computes the hypotenuse of a right triangle",
    "checks whether a number is a perfect square", "computes the Collatz sequence of n", "groups words by length",
    "counts the digits of an integer", "returns the last n lines of a file", "computes the range of a list",
    "builds a multiplication table", "normalises a list of numbers to 0..1", "checks whether a date is a weekend",
    "finds the smallest positive missing integer",
]
POLICY_STORY_SUBJECTS = [
    "a lighthouse cat", "a nervous magician", "an old sailor", "a robot gardener", "a mapmaker", "a glassblower",
    "a river ferryman", "a young firefighter", "a puppeteer", "a snow leopard", "a bookbinder", "a kite maker",
]
POLICY_ESSAY_TOPICS = [
    "the history of tea", "solar eclipses", "honeybees in winter", "the invention of the telephone", "coral reefs",
    "public transport", "the Great Wall of China", "paper making", "the Silk Road", "wind turbines",
    "the history of maps", "glaciers",
]
POLICY_DIALOGUE_TOPICS = [
    "learning to knit", "choosing running shoes", "staying focused in meetings", "starting to cook vegetarian meals",
    "visiting a museum with kids", "learning to type faster", "keeping a budget for groceries", "repainting a room",
    "getting into birdwatching", "preparing for a long flight", "writing a thank-you note", "learning to juggle",
    "organising a bookshelf", "starting to play tennis", "caring for an old dog", "hosting a picnic",
    "learning basic first aid", "planning a road trip",
]

ITEMS = ["apples", "pencils", "notebooks", "tickets", "cookies", "books", "shirts", "bottles of water", "plants"]
NAMES = ["Sam", "Maria", "Ali", "Chen", "Emma", "Lucas", "Priya", "Noah", "Sofia", "Omar", "Lena", "Kenji"]


def math_prompts(rng: random.Random, count: int) -> list[str]:
    out: list[str] = []
    while len(out) < count:
        kind = rng.randrange(6)
        a, b, c = rng.randint(2, 40), rng.randint(2, 40), rng.randint(41, 400)
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        if kind == 0:
            out.append(f"A shop sells {item} for ${a} each. If {name} buys {b} of them, how much does {name} pay? "
                       "Explain step by step.")
        elif kind == 1:
            out.append(f"Solve for x: {a}x + {b} = {c}. Show your work.")
        elif kind == 2:
            out.append(f"What is {a * 7 + b} multiplied by {b + 3}? Show the calculation.")
        elif kind == 3:
            out.append(f"{name} has {c} {item} and gives away {a} to each of {b % 9 + 2} friends. "
                       f"How many {item} are left?")
        elif kind == 4:
            out.append(f"A train travels {c} km in {a % 7 + 2} hours. What is its average speed? Explain.")
        else:
            out.append(f"What is {a}% of {c}? Explain how to compute it.")
        out = list(dict.fromkeys(out))
    return out


def essay(topic: str, template: str) -> str:
    return template.format(topic=topic, topic_cap=topic[0].upper() + topic[1:])


def split_topics(rng: random.Random, topics: list[str], num_bench: int) -> tuple[list[str], list[str]]:
    topics = topics[:]
    rng.shuffle(topics)
    return topics[num_bench:], topics[:num_bench]


def build(rng: random.Random) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    train: dict[str, list[str]] = {}
    bench: dict[str, list[str]] = {}

    code_train, code_bench = split_topics(rng, CODE_TASKS, 15)
    train["code"] = [t.format(lang=lang, task=task) for task in code_train for t in CODE_TEMPLATES
                     for lang in rng.sample(CODE_LANGS, 1)]
    bench["code"] = [rng.choice(CODE_TEMPLATES).format(lang=lang, task=task) for task in code_bench
                     for lang in rng.sample(CODE_LANGS, 2)]

    subj_train, subj_bench = split_topics(rng, STORY_SUBJECTS, 10)
    essay_train, essay_bench = split_topics(rng, ESSAY_TOPICS, 10)

    def story(subject: str, template: str) -> str:
        return template.format(subject=subject)

    train["continuation"] = ([story(s, t) for s in subj_train for t in rng.sample(STORY_OPENINGS, 2)]
                             + [essay(e, t) for e in essay_train for t in rng.sample(ESSAY_TEMPLATES, 2)])
    bench["continuation"] = ([story(s, rng.choice(STORY_OPENINGS)) for s in subj_bench]
                             + [essay(e, t) for e in essay_bench for t in rng.sample(ESSAY_TEMPLATES, 2)])

    dia_train, dia_bench = split_topics(rng, DIALOGUE_TOPICS, 15)
    train["dialogue"] = [t.format(topic=d) for d in dia_train for t in rng.sample(DIALOGUE_TEMPLATES, 3)]
    bench["dialogue"] = [t.format(topic=d) for d in dia_bench for t in rng.sample(DIALOGUE_TEMPLATES, 2)]

    maths = math_prompts(rng, 130 + NUM_BENCH)
    train["math"], bench["math"] = maths[NUM_BENCH:], maths[:NUM_BENCH]

    for task in bench:
        rng.shuffle(bench[task])
        bench[task] = bench[task][:NUM_BENCH]
        assert not set(bench[task]) & set(train[task]), task
    return train, bench


def build_extra(train: dict[str, list[str]], bench: dict[str, list[str]]) -> list[dict]:
    """More training prompts from the training topics: new combinations, more maths, sampled second answers."""
    rng = random.Random(SEED + 1)
    seen = {p for prompts in train.values() for p in prompts} | {p for prompts in bench.values() for p in prompts}
    bench_code = {task for task in CODE_TASKS if any(task in p for p in bench["code"])}
    rows: list[dict] = []

    def add(task: str, prompt: str, sample: bool = False) -> None:
        if sample or prompt not in seen:
            seen.add(prompt)
            rows.append({"prompt": prompt, "task": task} | ({"sample": True} if sample else {}))

    for task in (t for t in CODE_TASKS if t not in bench_code):
        for template in CODE_TEMPLATES:
            unused = [lang for lang in CODE_LANGS if template.format(lang=lang, task=task) not in seen]
            for lang in rng.sample(unused, min(2, len(unused))):
                add("code", template.format(lang=lang, task=task))
    bench_text = " ".join(bench["continuation"])
    for subject in (s for s in STORY_SUBJECTS if s not in bench_text):
        for template in STORY_OPENINGS:
            add("continuation", template.format(subject=subject))
    for topic in (t for t in ESSAY_TOPICS if t not in bench_text):
        for template in ESSAY_TEMPLATES:
            add("continuation", essay(topic, template))
    bench_dialogue = " ".join(bench["dialogue"])
    for topic in (t for t in DIALOGUE_TOPICS if t not in bench_dialogue):
        for template in DIALOGUE_TEMPLATES:
            add("dialogue", template.format(topic=topic))
    maths = len(rows)
    for prompt in math_prompts(rng, 400):
        if len(rows) - maths < 300:
            add("math", prompt)
    for task in ("continuation", "dialogue"):
        for prompt in train[task]:
            add(task, prompt, sample=True)
    rng.shuffle(rows)
    return [{"id": f"extra-{r['task']}-{i:04d}"} | r for i, r in enumerate(rows)]


def build_resample(rows: list[dict]) -> list[dict]:
    """One more sampled answer to every non-maths training prompt: more of the target's distribution on the tasks
    the head drafts worst, where held-out acceptance is limited by data (a head memorises its training answers)."""
    rng = random.Random(SEED + 2)
    out = [{"prompt": r["prompt"], "task": r["task"], "sample": True} for r in rows if r["task"] != "math"]
    out = list({r["prompt"]: r for r in out}.values())  # one more answer per prompt, however often it was asked
    rng.shuffle(out)
    return [{"id": f"resample-{r['task']}-{i:04d}"} | r for i, r in enumerate(out)]


def build_policy(seen: set[str]) -> list[dict]:
    """36 prompts per task on topics of their own (asserted disjoint from every other file's prompts)."""
    rng = random.Random(SEED + 3)
    prompts = {
        "code": [rng.choice(CODE_TEMPLATES).format(lang=rng.choice(CODE_LANGS), task=t) for t in POLICY_CODE_TASKS],
        "continuation": [rng.choice(STORY_OPENINGS).format(subject=s) for s in POLICY_STORY_SUBJECTS]
        + [essay(e, t) for e in POLICY_ESSAY_TOPICS for t in rng.sample(ESSAY_TEMPLATES, 2)],
        "dialogue": [t.format(topic=d) for d in POLICY_DIALOGUE_TOPICS for t in rng.sample(DIALOGUE_TEMPLATES, 2)],
        "math": [m for m in math_prompts(rng, 80) if m not in seen][:36],
    }
    rows = [{"prompt": p, "task": task} for task, ps in prompts.items() for p in ps]
    assert all(len(ps) == 36 for ps in prompts.values()) and not {r["prompt"] for r in rows} & seen
    rng.shuffle(rows)
    return [{"id": f"policy-{r['task']}-{i:03d}"} | r for i, r in enumerate(rows)]


# ---------------------------------------------------------------------------------------------------------------------
# Input-grounded tasks (summarize, extract, qa, code_edit): the answer reuses the prompt's wording, where a
# prompt-lookup drafter pays. Passages and code are written here, from structured material combined with a seeded RNG
# of its own (the files above do not change). Three sets with disjoint topics: every entity list and every domain (kind
# of passage, kind of record, function) is split between training, selector and benchmark before anything is drawn.

GROUNDED_TASKS = ("summarize", "extract", "qa", "code_edit")
GROUNDED_SIZES = {"train": 60, "policy": 36, "bench": NUM_BENCH}  # prompts per task type and set
GROUNDED_SEED = SEED + 10

FIRST_NAMES = [
    "Ada", "Bruno", "Clara", "Dmitri", "Elena", "Felix", "Greta", "Hugo", "Ines", "Jonas", "Keira", "Leon", "Mira",
    "Nils", "Olga", "Pavel", "Rosa", "Stefan", "Tessa", "Viktor", "Wanda", "Yusuf", "Zara", "Amir", "Beatrix",
    "Carlos", "Dana", "Emil", "Fatima", "Gavin", "Hana", "Ivan", "Jana", "Karim", "Lotte", "Marco", "Nadia", "Oscar",
    "Petra", "Quentin", "Rhea", "Soren", "Talia", "Umar", "Vera", "Walter", "Xenia", "Yara", "Anton", "Bianca",
    "Cyrus", "Delia", "Erik", "Flora", "Gustav", "Helga", "Isaac", "Julia", "Kofi", "Luisa", "Mateo", "Nora", "Otto",
    "Paula", "Rafael", "Selma", "Tomas", "Ursula", "Basil", "Wilma", "Aiko", "Boris",
]
SURNAMES = [
    "Abbott", "Baptiste", "Calloway", "Dunmore", "Everly", "Fairbanks", "Garrow", "Holloway", "Ingram", "Jansen",
    "Kowalski", "Lindqvist", "Marlowe", "Novak", "Okafor", "Pellegrini", "Quill", "Rasmussen", "Sato", "Thorne",
    "Underwood", "Varga", "Whitcombe", "Yilmaz", "Zeller", "Achebe", "Brennan", "Castellano", "Delacroix", "Eriksen",
    "Fenwick", "Galloway", "Haddad", "Ishikawa", "Jovanovic", "Kerrigan", "Larkin", "Moreau", "Nakamura", "Oyelaran",
    "Prescott", "Rinaldi", "Sorensen", "Takahashi", "Ulrich", "Vance", "Winslow", "Yamada", "Albright", "Bergstrom",
    "Cardenas", "Dalton", "Esposito", "Fischer", "Gallagher", "Hartley", "Iverson", "Kimura", "Lachance", "Mendez",
    "Nygaard", "Ostrowski", "Pham", "Rowntree", "Schaefer", "Tanaka", "Vasquez", "Whitaker", "Adeyemi", "Blackwood",
    "Coutinho", "Draper",
]
TOWNS = [
    "Bramfield", "Oakhollow", "Lindenport", "Westmarch", "Corrinton", "Ashby Vale", "Fernmouth", "Halewick",
    "Stonebury", "Millbrook Falls", "Kestrel Bay", "Rivenmoor", "Thornwick", "Elmstead", "Harrowgate Hill",
    "Pinecrest", "Greyhaven", "Marlow Cross", "Duncaster", "Silverlake", "Brackenridge", "Willowmere", "Northcliff",
    "Saltmarsh", "Glenhaven", "Redwater", "Foxley", "Ambergate", "Coldspring", "Lyndhurst Point", "Merriton",
    "Ravensford", "Cedar Hollow", "Bellhaven", "Quarrytown", "Harlow Green", "Mistral Bay", "Tannersby",
    "Oldcastle Mills", "Brightwater", "Kingsmoor", "Larkspur", "Penhallow", "Wrenfield", "Yarrowdale", "Hollin Cross",
    "Sandmere", "Gorsefield", "Umberton", "Vexley", "Dovecote", "Briarwood", "Fallowmere", "Heatherby",
    "Juniper Falls", "Kellsworth", "Moorvale", "Orrington", "Pebbleford", "Quenby",
]
COMPANIES = [
    "Brightloom", "Corvex", "Driftwood Labs", "Everpine", "Fluxwell", "Glimmer Foods", "Halcyon Tools", "Ironleaf",
    "Juniper Systems", "Kelpware", "Lumenforge", "Mossgate", "Northwind Cycles", "Orchard & Vine", "Pebblestone",
    "Quartzline", "Riverbend Textiles", "Saltbox Media", "Tidewater Robotics", "Umbra Optics", "Velvetine",
    "Wavecrest", "Yellowfin Audio", "Zephyr Kitchens", "Amberlight", "Bluefern", "Cobalt Bay", "Dapple Games",
    "Emberline", "Foxglove Health", "Greenmantle", "Hearthstone Appliances", "Inkwell Press", "Jadepoint",
    "Kindling Coffee", "Lanternfly", "Marigold Cosmetics", "Nimbus Drones", "Oakum Boats", "Pinwheel Toys",
    "Quillby Stationery", "Redcap Outdoor", "Sparrowhawk Aero", "Thistle Dairy", "Upland Organics", "Vantage Locks",
    "Willowby Furniture", "Yardarm Sailing",
]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
ENTITY_LISTS = {"first": FIRST_NAMES, "surname": SURNAMES, "town": TOWNS, "company": COMPANIES}


class Pool:
    """What one set may draw from (its own slice of every entity list), recording every entity it hands out."""

    def __init__(self, rng: random.Random, entities: dict[str, list[str]]):
        self.rng, self.entities, self.used = rng, entities, set()
        self.new_text()

    def entity(self, kind: str) -> str:
        value = self.rng.choice(self.entities[kind])
        self.used.add((kind, value))
        return value

    def first(self) -> str:
        return self.entity("first")

    def surname(self) -> str:
        return self.entity("surname")

    def person(self) -> str:
        return f"{self.first()} {self.surname()}"

    def town(self) -> str:
        return self.entity("town")

    def towns(self, k: int) -> list[str]:  # k different ones
        values = self.rng.sample(self.entities["town"], k)
        self.used.update(("town", value) for value in values)
        return values

    def company(self) -> str:
        return self.entity("company")

    def pick(self, options):
        return self.rng.choice(options)

    def sample(self, sentences: list[str], k: int) -> str:
        return " ".join(self.rng.sample(sentences, k))

    def num(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def date(self, years: tuple[int, int] = (2022, 2026)) -> str:
        day, month, year = self.num(1, 28), self.pick(MONTHS), self.num(*years)
        return f"{day} {month} {year}" if self.rng.random() < 0.5 else f"{month} {day}, {year}"

    def day(self) -> str:  # a date without the year
        return f"{self.num(1, 28)} {self.pick(MONTHS)}"

    def clock(self, lo: int = 8, hi: int = 18) -> str:
        hour, minute = self.num(lo, hi), self.pick(["00", "15", "30", "45"])
        return f"{hour}:{minute}"

    def many(self, lo: int, hi: int, unit: int) -> str:  # a round count, written with thousands separators
        return f"{self.num(lo, hi) * unit:,}"

    def new_text(self) -> None:  # one currency per passage
        self.symbol, self.currency = self.pick([("€", "euros"), ("£", "pounds"), ("$", "dollars")])

    def money(self, lo: int, hi: int, big: bool = False) -> str:
        if big:
            return f"{self.num(lo, hi)}.{self.num(1, 9)} million {self.currency}"
        return f"{self.symbol}{self.num(lo, hi):,}"


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


class Passage:
    """A passage said slot by slot: every slot's phrasings state the same fact, so its question fits any of them."""

    def __init__(self, pool: Pool):
        self.pool, self.sentences, self.questions = pool, [], []

    def say(self, options: list[str], question: tuple[str, str] | None = None, prob: float = 1.0,
            at: int | None = None) -> bool:
        if prob < 1.0 and self.pool.rng.random() > prob:
            return False
        self.sentences.insert(len(self.sentences) if at is None else at, self.pool.pick(options))
        if question:
            self.questions.append(question)
        return True

    def text(self) -> str:
        n = len(self.sentences)
        if n >= 7 and self.pool.rng.random() < 0.5:  # some in two paragraphs
            cut = n // 2 + self.pool.num(-1, 1)
            return " ".join(self.sentences[:cut]) + "\n\n" + " ".join(self.sentences[cut:])
        return " ".join(self.sentences)


# --- narrative passages (summarize and qa): each returns (passage, [(question, answer stated in it)])

FACILITIES = [
    ("library", "a children's reading room under a glass roof", "a quiet study floor with 120 desks"),
    ("swimming pool", "a 25-metre pool with six lanes", "a shallow pool for children learning to swim"),
    ("community centre", "a hall that seats 300 people", "a kitchen that local groups can rent by the hour"),
    ("covered market", "space for 60 stalls under one roof", "a loading yard for farmers' vans"),
    ("sports hall", "a climbing wall 14 metres high", "courts for basketball, volleyball and badminton"),
    ("concert hall", "a wooden stage built for small orchestras", "a rehearsal room for school bands"),
    ("public observatory", "a telescope with a 40-centimetre mirror", "a small planetarium for school classes"),
    ("railway station", "a roof covered in solar panels", "sheltered parking for 400 bicycles"),
]


def n_facility(p: Pool) -> tuple[str, list[tuple[str, str]]]:
    s = Passage(p)
    (town, other), mayor, date = p.towns(2), p.person(), p.date()
    kind, feat1, feat2 = p.pick(FACILITIES)
    firm = f"{p.surname()} {p.pick(['& Partners', 'Architects', 'Design Studio'])}"
    years, cost, visitors = p.num(2, 6), p.money(3, 40, big=True), p.many(8, 60, 100)
    old_year, reuse = p.num(1890, 1975), p.pick(["flats", "a youth club", "a museum of local history",
                                                  "offices for small businesses", "a music school"])
    s.say([f"The town of {town} opened its new {kind} on {date}, after {years} years of planning and building.",
           f"After {years} years of planning and building, the new {kind} in {town} opened to the public on {date}."],
          (f"When did the new {kind} in {town} open?", date))
    s.say([f"The project cost {cost}, most of it paid by the town council and the rest by a regional grant.",
           f"Building it cost {cost}, which the council paid for with a loan and a regional grant."],
          (f"How much did the new {kind} cost?", cost))
    s.say([f"It was designed by {firm}, a firm from nearby {other}.",
           f"The design is the work of {firm}, an architecture firm based in {other}."],
          (f"Which firm designed the {kind}?", firm))
    s.say([f"It has {feat1}, as well as {feat2}.",
           f"Its best-known features are {feat1} and {feat2}."], (f"What features does the {kind} have?", feat1))
    s.say([f"\"We have waited a long time for this,\" said Mayor {mayor} at the opening ceremony.",
           f"Mayor {mayor}, who cut the ribbon, called it \"a building for every age group in {town}\"."],
          (f"Who is the mayor of {town}?", mayor))
    s.say([f"The council expects about {visitors} visitors a week.",
           f"Staff expect around {visitors} visitors every week once schools start to book visits."],
          ("How many visitors a week are expected?", str(visitors)))
    s.say([f"The old {kind}, built in {old_year}, will be turned into {reuse}.",
           f"The building that housed the old {kind} since {old_year} is to become {reuse}."],
          (f"What will happen to the old {kind}?", reuse), prob=0.8)
    s.say([f"It is open every day except Monday, from {p.num(8, 10)} in the morning to {p.num(7, 10)} at night.",
           "Entry is free for residents, and guided tours run on Saturday mornings."], prob=0.6)
    s.say([f"The idea for a new {kind} first came from a group of parents and pensioners who collected "
           f"{p.num(2, 9)},000 signatures.",
           f"Residents had asked for a new {kind} for years, and a petition {p.num(5, 12)} years ago gathered "
           "thousands of signatures."], at=2)
    s.say(["Building work was delayed for several months when the ground turned out to be softer than expected.",
           "A shortage of steel held the work up for most of one winter, and the opening date moved twice."])
    s.say([f"Shops near the site hope the {kind} will bring more people into the town centre.",
           "Some neighbours still complain about the lack of parking nearby."], prob=0.7)
    return s.text(), s.questions


PRODUCTS = [
    ("electric bike", "a range of 90 kilometres on one charge", "weighs 19 kilograms"),
    ("smart thermostat", "learns a household's routine within a week", "fits in the palm of a hand"),
    ("coffee grinder", "has 40 grind settings", "is quieter than a normal conversation"),
    ("hiking backpack", "has a frame that adjusts to the wearer's back", "weighs just 1.1 kilograms"),
    ("pair of headphones", "blocks most background noise", "runs for 35 hours between charges"),
    ("robot vacuum cleaner", "maps every room it cleans", "empties itself into a base station"),
    ("electric kettle", "can hold water at any temperature for an hour", "boils a litre in under three minutes"),
    ("reading tablet", "has a screen that is easy to read in sunlight", "lasts six weeks on one charge"),
]


def n_launch(p: Pool) -> tuple[str, list[tuple[str, str]]]:
    s = Passage(p)
    company, town, ceo, date = p.company(), p.town(), p.person(), p.date()
    kind, feat, spec = p.pick(PRODUCTS)
    model = f"{p.pick(['Aria', 'Nomad', 'Pulse', 'Terra', 'Vista', 'Orbit', 'Echo', 'Summit'])} {p.num(2, 9)}"
    price, stores, units = p.money(49, 1900), p.num(40, 900), p.many(5, 95, 1000)
    s.say([f"{company}, a company based in {town}, has launched the {model}, a new {kind}.",
           f"The {town} company {company} has presented its latest {kind}, the {model}."],
          (f"What is the name of the new {kind}?", model))
    s.say([f"It goes on sale on {date} and will cost {price}.", f"The {model} will sell for {price}."],
          (f"How much will the {model} cost?", price))
    s.say([f"According to the company, the {model} {feat} and {spec}.",
           f"The company says the new model {feat}; it also {spec}."], (f"What can the {model} do?", feat))
    s.say([f"Chief executive {ceo} said the team had spent two years listening to customers before starting work.",
           f"\"This is the product our customers kept asking for,\" said {ceo}, the chief executive of {company}."],
          (f"Who is the chief executive of {company}?", ceo))
    s.say([f"It will be sold in {stores} shops as well as online.",
           f"At first it will only be available online, and later in {stores} partner shops."],
          ("In how many shops will it be sold?", str(stores)))
    s.say([f"{company} hopes to sell {units} units in the first year.",
           f"The company's target is {units} units in the first twelve months."],
          ("How many units does the company hope to sell in the first year?", str(units)))
    s.say(["Early reviewers praised the design but said the price was high for a first model.",
           "The previous model was withdrawn last year after complaints about its battery.",
           "Each one comes with a three-year guarantee and free repairs."], prob=0.7)
    s.say([f"{company} was founded {p.num(4, 30)} years ago in a small workshop and now employs "
           f"{p.num(60, 900)} people.",
           f"The company started out repairing old machines and only began making its own products "
           f"{p.num(5, 15)} years ago."], at=2)
    s.say([f"The {model} is made in a factory near {town}, which the company expanded last year.",
           "Most of the parts are made in Europe, and the company says the packaging is fully recyclable."])
    s.say(["Competitors are expected to bring out similar products before the end of the year.",
           "Shares in the company rose slightly after the announcement."], prob=0.7)
    return s.text(), s.questions


SPECIES = [
    ("red squirrels", "pine forests", "tagged"), ("river otters", "the upper valley", "tracked"),
    ("bumblebees", "farm meadows", "counted"), ("hedgehogs", "town gardens", "tagged"),
    ("marsh harriers", "the coastal marshes", "ringed"), ("freshwater mussels", "two clean rivers", "measured"),
    ("cave bats", "old mine tunnels", "ringed"), ("green turtles", "three sandy beaches", "tagged"),
]


def n_wildlife(p: Pool) -> tuple[str, list[tuple[str, str]]]:
    s = Passage(p)
    town, lead, other = p.town(), p.person(), p.person()
    species, habitat, verb = p.pick(SPECIES)
    years, number, pct, km = p.num(3, 12), p.num(40, 900), p.num(8, 60), p.num(3, 40)
    cause = p.pick(["warmer winters", "new hedgerows planted by farmers", "a ban on pesticides near water",
                    "fewer roads crossing their habitat", "cleaner water after a sewage plant was upgraded"])
    s.say([f"A team from the University of {town} has spent {years} years studying {species} in {habitat}.",
           f"For {years} years, researchers at the University of {town} have followed {species} living in {habitat}."],
          ("How long did the study last?", f"{years} years"))
    s.say([f"The study was led by {lead}, an ecologist who grew up in the area.",
           f"It was led by the ecologist {lead}."], ("Who led the study?", lead))
    s.say([f"Over that time the team {verb} {number} animals.", f"In total, {number} animals were {verb}."],
          (f"How many animals were {verb}?", str(number)))
    s.say([f"They found that the population grew by {pct} percent, mostly because of {cause}.",
           f"The main finding is a rise of {pct} percent in numbers, which the team links to {cause}."],
          ("By how much did the population grow?", f"{pct} percent"))
    s.say([f"Some individuals moved up to {km} kilometres from where they were first seen.",
           f"The longest journey recorded was {km} kilometres."],
          ("How far did some animals travel?", f"{km} kilometres"))
    s.say([f"A colleague, {other}, said the results surprised them, as numbers had been falling before.",
           f"\"Ten years ago we expected to be counting the last of them,\" said {other}, a member of the team."])
    s.say(["The next step is to share the data with local farmers and the park service.",
           "The team now wants to repeat the study in the neighbouring region.",
           "Volunteers from local schools helped with the counts every spring."], prob=0.8)
    s.say([f"The work started after local walkers reported seeing fewer {species} than in the past.",
           f"Little was known about {species} in the region before the study began."], at=2)
    s.say(["The team used small cameras, radio tags and hundreds of hours of field notes.",
           "Most of the data came from cameras hidden along paths and from volunteers' notebooks."])
    s.say([f"The results were published this month and presented at a meeting in {town}.",
           "The researchers warn that the gains could be lost if the habitat is not protected."], prob=0.8)
    return s.text(), s.questions


SPORTS = [("football", "goals", "United"), ("handball", "goals", "Hawks"), ("basketball", "points", "Falcons"),
          ("rugby", "tries", "Rovers"), ("ice hockey", "goals", "Wolves"), ("volleyball", "points", "Comets")]


def n_final(p: Pool) -> tuple[str, list[tuple[str, str]]]:
    s = Passage(p)
    (town, rival), coach, star = p.towns(2), p.person(), p.person()
    sport, unit, nick = p.pick(SPORTS)
    hi = {"goals": (3, 7), "points": (60, 99), "tries": (3, 6)}[unit]
    a = p.num(*hi)
    b = a - p.num(1, 2 if unit != "points" else 9)
    score, crowd, drought = f"{a}-{b}", p.many(20, 95, 100), p.num(8, 40)
    scored = p.num(2, 3 if unit != "points" else 31)
    ground, date = f"{p.surname()} Park", p.date()
    s.say([f"{town} {nick} won the regional {sport} final on {date}, beating {rival} {score}.",
           f"On {date}, {town} {nick} beat {rival} {score} to win the regional {sport} final."],
          ("What was the score of the final?", score))
    s.say([f"It is the club's first title in {drought} years.", f"The club had waited {drought} years for a title."],
          ("How long had the club waited for a title?", f"{drought} years"))
    s.say([f"A crowd of {crowd} watched the match at {ground}.", f"The match at {ground} was watched by {crowd} fans."],
          ("How many people watched the match?", str(crowd)))
    s.say([f"{star} was the best player on the field, with {scored} {unit}.",
           f"{star} scored {scored} {unit} and was named player of the match."],
          (f"How many {unit} did {star} score?", str(scored)))
    s.say([f"{rival} led at half-time, but {town} came back after the break.",
           f"{town} took an early lead and never gave it up, although {rival} came close in the last minutes."])
    s.say([f"Coach {coach}, who took over the team two seasons ago, thanked the supporters.",
           f"\"The players never stopped believing,\" said coach {coach}."], ("Who is the coach of the team?", coach))
    s.say(["The team will now play in the national cup next season.",
           f"A parade through the centre of {town} is planned for the weekend."], prob=0.8)
    s.say([f"The season had started badly for {town}, with three defeats in the first four games.",
           f"Few people had expected {town} to reach the final after an injury-hit season."], at=2)
    s.say([f"Tickets for the final sold out within {p.num(2, 9)} hours.",
           f"Fans travelled from across the region, and extra trains were put on from {rival}."])
    s.say([f"{rival} had won the final in each of the last two seasons.",
           f"It was {rival}'s first defeat in a final for six years."], prob=0.8)
    return s.text(), s.questions


FESTIVALS = [
    ("Kite Festival", "a kite shaped like a whale, 20 metres long"), ("Jazz Festival", "a late-night jam session"),
    ("Lantern Festival", "a parade of 2,000 paper lanterns"), ("Cheese Fair", "a tasting tent with 150 cheeses"),
    ("Folk Music Festival", "a singing workshop for children"), ("Film Festival", "an outdoor cinema by the lake"),
    ("Book Festival", "a night of readings in the old church"),
    ("Pumpkin Festival", "a contest for the heaviest pumpkin"),
]


def n_festival(p: Pool) -> tuple[str, list[tuple[str, str]]]:
    s = Passage(p)
    town, boss, guest = p.town(), p.person(), p.person()
    fest, highlight = p.pick(FESTIVALS)
    edition, visitors, stalls, raised = p.num(5, 60), p.many(4, 90, 1000), p.num(30, 250), p.money(2000, 40000)
    start = p.num(1, 25)
    month = p.pick(MONTHS)
    dates, price = f"{start} to {start + 2} {month}", p.money(5, 35)
    s.say([f"The {ordinal(edition)} {town} {fest} took place from {dates}.",
           f"From {dates}, {town} held its {fest} for the {ordinal(edition)} time."],
          (f"When did the {fest} take place?", dates))
    s.say([f"Organisers counted about {visitors} visitors over the three days, a record.",
           f"About {visitors} people came over the three days, more than ever before."],
          ("How many visitors came?", str(visitors)))
    s.say([f"The main guest this year was {guest}, who opened the festival on Friday evening.",
           f"{guest} was the star guest and opened the first evening."], ("Who was the main guest?", guest))
    s.say([f"New this year was {highlight}.", f"The highlight for many visitors was {highlight}."],
          ("What was new or special this year?", highlight))
    s.say([f"There were {stalls} stalls selling food, crafts and local drinks.",
           f"Visitors could choose between {stalls} stalls of food and crafts."],
          ("How many stalls were there?", str(stalls)))
    s.say([f"A day ticket cost {price}, and children under twelve went free.",
           f"Tickets were {price} a day; entry was free for children under twelve."],
          ("How much did a day ticket cost?", price))
    s.say([f"The festival raised {raised} for the local hospice, said organiser {boss}.",
           f"According to festival director {boss}, {raised} was raised for the town's hospice."],
          ("How much money was raised?", raised))
    s.say(["The festival began in a single field with a few dozen visitors and has grown every year since.",
           "What started as a small gathering in a pub garden is now one of the biggest events in the region."], at=2)
    s.say(["Extra buses ran from the station every twenty minutes, and the main street was closed to cars.",
           "Volunteers handed out free water, and a first-aid tent stayed open until midnight."])
    s.say(["Some residents complained about noise late at night, and the council has promised to review the rules.",
           "Next year's dates will be announced in the spring."], prob=0.8)
    return s.text(), s.questions


def n_storm(p: Pool) -> tuple[str, list[tuple[str, str]]]:
    s = Passage(p)
    name, (town, other), official = p.first(), p.towns(2), p.person()
    wind, rain, homes, trees, days = p.num(90, 160), p.num(40, 180), p.many(2, 60, 1000), p.num(80, 900), p.num(1, 4)
    role = p.pick(["the head of the regional emergency service", "the county's chief fire officer",
                   f"the mayor of {town}"])
    s.say([f"Storm {name} reached the coast near {town} on the night of {p.day()}.",
           f"Storm {name} hit {town} and the surrounding villages overnight on {p.day()}."],
          (f"Where did Storm {name} reach the coast?", town))
    s.say([f"Winds of up to {wind} kilometres per hour were measured on the harbour wall.",
           f"Gusts reached {wind} kilometres per hour, the strongest in the region for a decade."],
          ("How strong were the winds?", f"{wind} kilometres per hour"))
    s.say([f"In {other}, {rain} millimetres of rain fell in 24 hours, and the river burst its banks.",
           f"The heaviest rain fell in {other}: {rain} millimetres in a single day."],
          (f"How much rain fell in {other}?", f"{rain} millimetres"))
    s.say([f"At the peak, {homes} homes were without power.", f"About {homes} homes lost electricity."],
          ("How many homes lost power?", str(homes)))
    s.say([f"Crews removed {trees} fallen trees from roads and railway lines.",
           f"More than {trees} trees came down, blocking roads and two railway lines."],
          ("How many trees fell?", str(trees)))
    s.say([f"Schools stayed closed for {days} days.", f"Schools in the area closed for {days} days."],
          ("How long did schools stay closed?", f"{days} days"))
    s.say([f"{official}, {role}, said the damage would take weeks to repair and asked people to avoid the coast road.",
           f"\"Nobody was seriously hurt, which is what matters,\" said {official}, {role}."],
          ("Who spoke for the authorities?", official))
    s.say([f"Forecasters had warned about the storm {p.num(2, 5)} days in advance.",
           "The weather service issued its highest warning the evening before."], at=2)
    s.say(["Several ferries were cancelled, and the coast road was closed after waves washed stones onto it.",
           "Trains between the coast and the city were stopped for most of the following day."])
    s.say(["Insurance companies say claims are likely to reach record levels for the area.",
           "Volunteers have set up a centre in the town hall where people can get hot meals and dry clothes."],
          prob=0.8)
    return s.text(), s.questions


MUSEUMS = [("Maritime Museum", "ship models and sailors' diaries", "a ship's bell from 1790"),
           ("Museum of Clocks", "clocks and pocket watches", "a water clock from the 1600s"),
           ("Textile Museum", "woven cloth, dresses and old looms", "a silk banner from 1820"),
           ("Railway Museum", "engines, tickets and station signs", "a steam engine from 1861"),
           ("Toy Museum", "dolls, tin cars and board games", "a wooden rocking horse from 1750"),
           ("Museum of Photography", "cameras and early photographs", "a glass plate photograph from 1852")]


def n_exhibition(p: Pool) -> tuple[str, list[tuple[str, str]]]:
    s = Passage(p)
    (town, lender), curator = p.towns(2), p.person()
    museum, things, oldest = p.pick(MUSEUMS)
    title = p.pick([f"Made in {town}", "Small Wonders", "Hidden Stories", "A Century of Change", "Behind the Glass",
                    "Things We Kept"])
    objects, until, price, so_far = p.num(80, 600), p.date(), p.money(4, 18), p.many(3, 40, 1000)
    s.say([f"The {town} {museum} has opened a new exhibition called \"{title}\".",
           f"\"{title}\" is the name of the new exhibition at the {town} {museum}."],
          ("What is the exhibition called?", title))
    s.say([f"It brings together {objects} objects, mostly {things}.",
           f"On show are {objects} objects, mostly {things}."], ("How many objects are on show?", str(objects)))
    s.say([f"The oldest piece is {oldest}.", f"Visitors can see {oldest}, the oldest item in the show."],
          ("What is the oldest piece?", oldest))
    s.say([f"Many of the objects were lent by the city museum of {lender} and by private collectors.",
           f"About a third of the pieces come from the museum in {lender}."],
          ("Where do many of the objects come from?", lender))
    s.say([f"The exhibition was put together by curator {curator}, who spent three years on it.",
           f"Curator {curator} said the aim was to show how ordinary people lived."],
          ("Who is the curator?", curator))
    s.say([f"It runs until {until}.", f"The show closes on {until}."], ("When does the exhibition close?", until))
    s.say([f"Tickets cost {price}.", f"Entry costs {price}, and it is free on the first Sunday of each month."],
          ("How much does a ticket cost?", price))
    s.say([f"So far {so_far} people have visited.", f"It has already had {so_far} visitors."], prob=0.7)
    s.say([f"The exhibition is spread over {p.num(3, 7)} rooms on the first floor, each covering a different period.",
           "Each room covers a different period, from the oldest pieces to objects used within living memory."], at=2)
    s.say(["Some objects are so fragile that they are kept behind glass in dim light.",
           "Visitors are allowed to handle copies of some of the objects in a special corner for children."])
    s.say(["An audio guide is available in four languages.",
           "A programme of talks and workshops runs alongside the exhibition on Thursday evenings."], prob=0.8)
    return s.text(), s.questions


PROFESSIONS = [
    ("bridge engineer", "the Long Bridge over the estuary"), ("botanist", "a guide to 900 mountain plants"),
    ("composer", "the opera \"The Salt Road\""), ("mapmaker", "the first full map of the northern lakes"),
    ("glassmaker", "the coloured windows of the town hall"), ("children's author", "the \"Little Fox\" books"),
    ("chemist", "a cheap way to clean drinking water"), ("photographer", "a book of portraits of miners"),
]


def n_biography(p: Pool) -> tuple[str, list[tuple[str, str]]]:
    s = Passage(p)
    person, (town, city), teacher = p.person(), p.towns(2), p.person()
    job, work = p.pick(PROFESSIONS)
    born = p.num(1880, 1960)
    study, work_year, award_year = born + p.num(17, 20), born + p.num(28, 40), born + p.num(45, 60)
    parent = p.pick(["a baker", "a schoolteacher", "a fisherman", "a tailor", "a nurse", "a carpenter"])
    award = p.pick(["the National Medal of Arts", "the Golden Compass Prize", "an honorary doctorate",
                    "the Royal Society's medal", "the Order of Merit"])
    s.say([f"{person} was born in {town} in {born}, the child of {parent}.",
           f"Born in {born} in the small town of {town}, {person} was the child of {parent}."],
          (f"Where was {person} born?", town))
    s.say([f"At {study - born}, {person.split()[0]} moved to {city} to study under {teacher}.",
           f"In {study} the young {person.split()[0]} left home for {city}, where {teacher} became a mentor."],
          (f"Who was {person.split()[0]}'s teacher?", teacher))
    s.say([f"{person.split()[0]} became a {job} and is best known for {work}, completed in {work_year}.",
           f"As a {job}, {person.split()[0]} made a name with {work} in {work_year}."],
          (f"What is {person} best known for?", work))
    s.say([f"In {award_year}, {person.split()[1]} received {award}.",
           f"Recognition came in {award_year} with {award}."],
          (f"Which award did {person} receive?", award))
    s.say([f"Friends described {person.split()[0]} as patient, stubborn and very funny.",
           f"{person.split()[0]} never owned a car and walked to work every day."], prob=0.7)
    s.say([f"{person.split()[1]} spent the final years back in {town}, teaching young people the trade.",
           f"Late in life, {person.split()[1]} returned to {town} and opened a small school there."],
          (f"Where did {person} spend the final years?", town))
    s.say([f"The early years were hard: the family had little money, and {person.split()[0]} worked in the "
           "evenings to pay for books.",
           f"As a child, {person.split()[0]} spent hours drawing, taking things apart and asking questions."], at=1)
    s.say([f"Much of the work was done in a small studio in {city}, where {person.split()[1]} lived for "
           f"{p.num(10, 30)} years.",
           f"{person.split()[1]} worked mostly alone, often starting before dawn."])
    s.say([f"Some of {person.split()[1]}'s notebooks are now kept in the library of {city}.",
           f"A street in {town} is now named after {person.split()[1]}."], prob=0.8)
    return s.text(), s.questions


EATERIES = [
    ("bakery", "cardamom buns", "loaves"), ("noodle bar", "a spicy beef noodle soup", "bowls"),
    ("vegetarian café", "a mushroom and barley stew", "plates"),
    ("pizzeria", "a pizza with figs and goat cheese", "pizzas"),
    ("fish restaurant", "grilled mackerel with potatoes", "plates"),
    ("ice-cream shop", "salted honey ice cream", "cones"),
]


def n_eatery(p: Pool) -> tuple[str, list[tuple[str, str]]]:
    s = Passage(p)
    owner, town, farm = p.person(), p.town(), p.surname()
    kind, dish, unit = p.pick(EATERIES)
    street = f"{p.pick(['Mill', 'Church', 'Harbour', 'Station', 'Market', 'Bridge'])} Street"
    name = p.pick(["The Copper Pot", "Little Kitchen", "Corner Table", "The Blue Door", "Hearth", "Open Oven"])
    seats, price, staff, sold = p.num(12, 80), p.money(4, 22), p.num(3, 15), p.num(80, 600)
    s.say([f"A new {kind} called {name} has opened on {street} in {town}.",
           f"{name}, a {kind}, opened this month on {street}, in the centre of {town}."],
          ("What is the name of the new place?", name))
    s.say([f"It is run by {owner}, who trained as a cook abroad before coming home.",
           f"The owner, {owner}, worked in restaurant kitchens for ten years before opening it."],
          ("Who runs it?", owner))
    s.say([f"The dish everyone talks about is {dish}, which costs {price}.",
           f"Its best seller is {dish}, priced at {price}."],
          (f"How much does the {dish.split(' with ')[0]} cost?", price))
    s.say([f"On a busy day the kitchen sells {sold} {unit}.", f"Staff say they sell up to {sold} {unit} a day."],
          ("How much does it sell on a busy day?", str(sold)))
    s.say([f"There are {seats} seats inside and a few tables on the pavement.",
           f"The room has {seats} seats, so it is worth booking at weekends."],
          ("How many seats are there?", str(seats)))
    s.say([f"Vegetables and milk come from the {farm} farm, a few kilometres away.",
           f"Most ingredients come from {farm} Farm outside town."], ("Where do the ingredients come from?", farm))
    s.say([f"{staff} people work there, most of them from {town}.", f"It employs {staff} people."],
          ("How many people work there?", str(staff)), prob=0.8)
    s.say([f"The building used to be a {p.pick(['shoe shop', 'bank', 'bookshop', 'post office'])}, and some of the "
           "old shelves are still on the walls.",
           "The owner rebuilt the kitchen and painted the walls with the help of friends and family."], at=2)
    s.say([f"It is open from Tuesday to Sunday, from {p.num(7, 11)} in the morning until late.",
           "It is closed on Mondays, when the staff prepare food for the rest of the week."])
    s.say(["Early reviews have been warm, although some diners say the queues are long at lunchtime.",
           "Bookings can be made by phone, but a few tables are always kept free for walk-ins."], prob=0.8)
    return s.text(), s.questions


CONTESTS = [
    ("robotics", "a robot that sorts recycling by colour"),
    ("science fair", "a water filter made from sand and charcoal"),
    ("programming", "an app that tells bus users when to leave home"),
    ("debating", "a debate on whether homework should be banned"),
    ("engineering", "a bridge of lolly sticks that held 40 kilograms"),
    ("chemistry", "a battery made from potatoes and copper coins"),
]


def n_contest(p: Pool) -> tuple[str, list[tuple[str, str]]]:
    s = Passage(p)
    (town, city), teacher, pupil = p.towns(2), p.person(), p.person()
    contest, project = p.pick(CONTESTS)
    school = f"{town} {p.pick(['High School', 'Academy', 'Secondary School', 'Grammar School'])}"
    team, teams, prize = p.num(3, 9), p.num(12, 80), p.money(500, 5000)
    s.say([f"A team of {team} students from {school} has won the national {contest} competition.",
           f"{school} won the national {contest} competition this year with a team of {team} students."],
          ("Which school won the competition?", school))
    s.say([f"The final was held in {city}, where {teams} teams from across the country took part.",
           f"{teams} teams took part in the final, which was held in {city}."],
          ("How many teams took part?", str(teams)))
    s.say([f"Their winning entry was {project}.", f"The judges chose their entry, {project}."],
          ("What was the winning entry?", project))
    s.say([f"The team was coached by {teacher}, who teaches physics at the school.",
           f"Their teacher {teacher} has coached the team for five years."], ("Who coached the team?", teacher))
    s.say([f"\"We built the first version in a garage,\" said team captain {pupil}.",
           f"Team captain {pupil} said the hardest part was explaining the idea to the judges in three minutes."],
          ("Who was the team captain?", pupil))
    s.say([f"The prize of {prize} will go towards new equipment for the school.",
           f"The school received a prize of {prize}, which will be spent on a new workshop."],
          ("How much was the prize?", prize))
    s.say(["Next year the team hopes to enter the European round.",
           "It is the first time a school from the region has won."], prob=0.7)
    s.say([f"The students worked on the project for {p.num(4, 10)} months, mostly after school and at weekends.",
           "Most of the work was done during lunch breaks and at an after-school club."], at=2)
    s.say(["They had to present their idea to a panel of engineers and answer questions for ten minutes.",
           "The judges looked at how well the entry worked, how original it was and how clearly it was explained."])
    s.say(["Several local companies have already offered to help the team build a second version.",
           "The school plans to show the winning entry at its open day."], prob=0.8)
    return s.text(), s.questions


def n_transit(p: Pool) -> tuple[str, list[tuple[str, str]]]:
    s = Passage(p)
    town, operator, chair, date = p.town(), p.company(), p.person(), p.date()
    mode = p.pick(["tram", "bus", "ferry", "cable car"])
    line, stops, km, minutes = p.num(2, 19), p.num(4, 24), p.num(3, 18), p.num(8, 40)
    cost, riders, fare = p.money(20, 300, big=True), p.many(3, 40, 1000), p.money(1, 4)
    places = p.pick([("the station", "the hospital"), ("the harbour", "the university"),
                     ("the old town", "the airport"), ("the market square", "the business park")])
    s.say([f"{town}'s new {mode} line {line} opened on {date}.",
           f"On {date}, the first passengers rode the new {mode} line {line} in {town}."],
          (f"When did {mode} line {line} open?", date))
    s.say([f"It links {places[0]} with {places[1]} and has {stops} stops along {km} kilometres.",
           f"The line runs {km} kilometres from {places[0]} to {places[1]}, with {stops} stops."],
          ("How many stops does the line have?", str(stops)))
    s.say([f"The full journey takes {minutes} minutes.", f"A trip from end to end takes about {minutes} minutes."],
          ("How long does the full journey take?", f"{minutes} minutes"))
    s.say([f"Building the line cost {cost}.", f"The project's final cost was {cost}."],
          ("How much did the line cost?", cost))
    s.say([f"It is run by {operator}, which expects {riders} passengers a day.",
           f"The operator, {operator}, expects about {riders} passengers every day."],
          ("Which company runs the line?", operator))
    s.say([f"A single ticket costs {fare}.", f"A single fare is {fare}, the same as on the rest of the network."],
          ("How much is a single ticket?", fare))
    s.say([f"{chair}, who chairs the transport committee, said the line would take cars off the main roads.",
           f"\"Many people here have waited twenty years for this,\" said {chair}, chair of the transport committee."],
          ("Who chairs the transport committee?", chair))
    s.say([f"Work on the line began {p.num(2, 6)} years ago and caused long traffic jams in the centre.",
           "Building the line meant closing several streets for months, which angered many shop owners."], at=2)
    s.say([f"Services run every {p.num(5, 15)} minutes during the day and every half hour in the evening.",
           "In the first week, travel on the line is free for everyone."])
    s.say(["Cyclists can take their bikes on board outside rush hour.",
           "The council is already studying a second line to the north of the town."], prob=0.8)
    return s.text(), s.questions


CROPS = [("apples", "a hailstorm in May"), ("potatoes", "a wet spring"), ("lavender", "a very dry summer"),
         ("strawberries", "a late frost"), ("pumpkins", "a heatwave in August"), ("wheat", "a cold, wet harvest week"),
         ("pears", "strong winds in September"), ("carrots", "a plague of slugs")]


def n_harvest(p: Pool) -> tuple[str, list[tuple[str, str]]]:
    s = Passage(p)
    farmer, town = p.person(), p.town()
    farm = f"{p.surname()} Farm"
    crop, problem = p.pick(CROPS)
    tonnes, last, ha, pickers, price = p.num(40, 900), p.num(40, 900), p.num(12, 300), p.num(6, 60), p.num(2, 9)
    s.say([f"{farm}, just outside {town}, brought in {tonnes} tonnes of {crop} this year.",
           f"This year's harvest at {farm} near {town} came to {tonnes} tonnes of {crop}."],
          (f"How many tonnes of {crop} were harvested?", f"{tonnes} tonnes"))
    s.say([f"Last year the farm harvested {last} tonnes.", f"That compares with {last} tonnes the year before."],
          ("How much was harvested last year?", f"{last} tonnes"))
    s.say([f"The farm grows {crop} on {ha} hectares.", f"{crop.capitalize()} are grown on {ha} hectares of the farm."],
          (f"On how many hectares are {crop} grown?", str(ha)))
    s.say([f"Farmer {farmer} said the biggest problem of the season was {problem}.",
           f"According to {farmer}, who runs the farm, {problem} cost them part of the crop."],
          ("What was the biggest problem of the season?", problem))
    s.say([f"{pickers} seasonal workers helped with the harvest.", f"The farm hired {pickers} extra workers."],
          ("How many extra workers were hired?", str(pickers)))
    s.say([f"The {crop} are sold at the farm shop for {p.symbol}{price} a kilo.",
           f"At the farm shop, a kilo of {crop} costs {p.symbol}{price}."],
          ("How much does a kilo cost?", f"{p.symbol}{price}"))
    s.say(["Next year the farm plans to try a new variety that needs less water.",
           "A new cold store means the crop can now be sold until spring."], prob=0.7)
    s.say([f"The farm has been in the same family for {p.num(3, 6)} generations.",
           f"{farmer} took over the farm from a parent {p.num(5, 25)} years ago."], at=2)
    s.say(["Most of the crop goes to shops and markets in the region, and some is sold to a local cider maker.",
           "About half of the crop is sold to supermarkets; the rest goes to markets and the farm shop."])
    s.say(["Other farmers in the area report similar results this year.",
           "The farm also runs open days for schools in the autumn."], prob=0.8)
    return s.text(), s.questions


def n_clinic(p: Pool) -> tuple[str, list[tuple[str, str]]]:
    s = Passage(p)
    town, director, date = p.town(), p.person(), p.date()
    name = f"{town} {p.pick(['Health Centre', 'Family Clinic', 'Community Clinic', 'Medical Centre'])}"
    doctors, nurses, patients = p.num(3, 14), p.num(4, 20), p.num(60, 400)
    service = p.pick(["a dental surgery", "a physiotherapy room", "a pharmacy", "a children's ward",
                      "an eye clinic", "a minor injuries unit"])
    s.say([f"The new {name} opened its doors on {date}.", f"On {date}, the {name} saw its first patients."],
          ("When did the clinic open?", date))
    s.say([f"It has {doctors} doctors and {nurses} nurses.", f"{doctors} doctors and {nurses} nurses work there."],
          ("How many doctors work there?", str(doctors)))
    s.say([f"The clinic expects to see {patients} patients a day.",
           f"About {patients} patients a day are expected once it is fully open."],
          ("How many patients a day are expected?", str(patients)))
    s.say([f"The building also houses {service}.", f"Under the same roof there is {service}."],
          ("What else is in the building?", service))
    s.say([f"Its director, Dr {director}, said waiting times in the area should fall by half.",
           f"\"People will no longer have to travel an hour to see a doctor,\" said the director, Dr {director}."],
          ("Who is the director?", f"Dr {director}"))
    s.say([f"It is open from {p.num(7, 9)} a.m. to {p.num(6, 9)} p.m. on weekdays and on Saturday mornings.",
           "It is open on weekdays and on Saturday mornings."])
    s.say(["Patients can book appointments online or by phone.",
           "The old surgery on the high street will close at the end of the month."], prob=0.8)
    s.say([f"Until now, patients in {town} had to travel to the hospital in the city for many tests.",
           "For years, people in the area had complained about long waits for an appointment."], at=2)
    s.say(["The building has solar panels on the roof and a garden that patients can use.",
           "The waiting room is bright and has a play corner for children."])
    s.say(["The clinic is still looking for two more doctors.",
           "A bus stop has been moved closer to the entrance."], prob=0.8)
    return s.text(), s.questions


CAUSES = ["the children's hospital", "a new lifeboat", "the local food bank", "research into childhood cancer",
          "a shelter for homeless families", "a hospice"]


def n_charity_run(p: Pool) -> tuple[str, list[tuple[str, str]]]:
    s = Passage(p)
    town, winner, woman, boss = p.town(), p.person(), p.person(), p.person()
    km, runners, minutes, seconds = p.pick([5, 10, 21]), p.many(3, 60, 100), p.num(15, 80), p.num(10, 59)
    raised, cause, oldest = p.money(10000, 200000), p.pick(CAUSES), p.num(78, 94)
    s.say([f"{runners} runners took part in the {town} charity run last Sunday.",
           f"Last Sunday's charity run in {town} drew {runners} runners."],
          ("How many runners took part?", str(runners)))
    s.say([f"The course was {km} kilometres long and followed the river.",
           f"Runners covered {km} kilometres, starting and finishing in the park."],
          ("How long was the course?", f"{km} kilometres"))
    s.say([f"{winner} crossed the line first in {minutes} minutes and {seconds} seconds.",
           f"The fastest time, {minutes} minutes and {seconds} seconds, was set by {winner}."],
          ("Who won the run?", winner))
    s.say([f"The oldest runner, {woman}, was {oldest} years old.",
           f"{woman}, aged {oldest}, was the oldest person to finish."],
          ("How old was the oldest runner?", str(oldest)))
    s.say([f"The event raised {raised} for {cause}.",
           f"Together the runners raised {raised}, which will go to {cause}."],
          ("How much money was raised?", raised))
    s.say([f"Organiser {boss} thanked the 200 volunteers who handed out water along the way.",
           f"\"The weather was kind to us this year,\" said organiser {boss}."], ("Who organised the run?", boss))
    s.say(["Many runners wore fancy dress, and a group of firefighters ran in full uniform.",
           "Next year's run will take place on the same weekend."], prob=0.8)
    s.say([f"Runners of all ages took part, from children of {p.num(6, 10)} to pensioners.",
           "Some ran the whole course, while others walked with their dogs or pushed prams."], at=2)
    s.say(["Roads in the centre were closed from eight in the morning until two in the afternoon.",
           "A band played at the finish line, and every runner received a medal."])
    s.say(["The run was first held ten years ago, with fewer than a hundred runners.",
           "Many runners were running for friends or family members who had been helped by the charity."], prob=0.8)
    return s.text(), s.questions


def n_reserve(p: Pool) -> tuple[str, list[tuple[str, str]]]:
    s = Passage(p)
    town, warden, trust = p.town(), p.person(), p.surname()
    ha, trees, volunteers, years = p.num(20, 900), p.many(2, 90, 1000), p.num(30, 400), p.num(2, 10)
    land = p.pick(["an old gravel pit", "former farmland", "a closed golf course", "a drained wetland",
                   "an abandoned quarry"])
    back = p.pick(["otters", "kingfishers", "water voles", "barn owls", "natterjack toads", "beavers"])
    s.say([f"A new nature reserve of {ha} hectares has opened near {town} on what used to be {land}.",
           f"What used to be {land} near {town} is now a nature reserve of {ha} hectares."],
          ("What was the land before it became a reserve?", land))
    s.say([f"The {trust} Trust bought the site {years} years ago.",
           f"The site was bought by the {trust} Trust {years} years ago and has been restored since."],
          ("Who bought the site?", f"{trust} Trust"))
    s.say([f"Since then, volunteers have planted {trees} trees and dug four new ponds.",
           f"{trees} trees have been planted, and four ponds were dug by hand."],
          ("How many trees have been planted?", str(trees)))
    s.say([f"More than {volunteers} volunteers helped with the work.",
           f"The work was done by {volunteers} volunteers."],
          ("How many volunteers helped?", str(volunteers)))
    s.say([f"Warden {warden} said the biggest surprise was the return of {back}, not seen there for decades.",
           f"{back.capitalize()} have come back to the area, said warden {warden}."],
          ("Which animals have returned?", back))
    s.say(["A path for wheelchairs and pushchairs runs around the largest pond.",
           "Dogs are welcome on the main path but must be kept on a lead."], prob=0.8)
    s.say(["Entry is free, and a small visitor centre opens at weekends.",
           "Guided walks start at the car park every Sunday at ten."], prob=0.8)
    s.say(["The work began with clearing rubbish and old machinery, which took almost a year.",
           "At first the site was covered in rubbish, broken fences and old machinery."], at=2)
    s.say([f"The reserve now has {p.num(3, 9)} kilometres of paths and two wooden bird hides.",
           "Two wooden hides allow visitors to watch birds without disturbing them."])
    s.say(["Local schools will use the reserve for outdoor lessons.",
           "Some farmers nearby were worried about the plans at first, but most now support them."], prob=0.8)
    return s.text(), s.questions


PLAYS = ["The Glass Orchard", "Winter at the Mill", "A House by the Sea", "The Last Ferry", "Paper Crowns",
         "The Quiet Year", "Salt and Silver", "Night Train North"]


def n_premiere(p: Pool) -> tuple[str, list[tuple[str, str]]]:
    s = Passage(p)
    town, writer, director, lead = p.town(), p.person(), p.person(), p.person()
    play = p.pick(PLAYS)
    theatre = f"{p.surname()} Theatre"
    seats, shows, weeks, price = p.num(120, 900), p.num(12, 60), p.num(3, 10), p.money(12, 45)
    story = p.pick(["two sisters who inherit a failing orchard", "a miller who refuses to sell his land",
                    "a family waiting for news of a missing fisherman", "the last crew of a river ferry",
                    "a young printer who runs a secret newspaper"])
    s.say([f"\"{play}\", a new play by {writer}, opened at the {theatre} in {town} on Friday.",
           f"The {theatre} in {town} presented the first performance of {writer}'s new play, \"{play}\", on Friday."],
          ("Who wrote the play?", writer))
    s.say([f"It tells the story of {story}.", f"The play follows {story}."], ("What is the play about?", story))
    s.say([f"It is directed by {director}, with {lead} in the main role.",
           f"{lead} plays the lead, and {director} directs."], ("Who plays the main role?", lead))
    s.say([f"All {seats} seats were sold for the opening night.", f"The opening night sold out all {seats} seats."],
          ("How many seats does the theatre have?", str(seats)))
    s.say([f"There will be {shows} performances over {weeks} weeks.",
           f"The play runs for {weeks} weeks, with {shows} performances in all."],
          ("How many performances will there be?", str(shows)))
    s.say([f"Tickets start at {price}.", f"The cheapest tickets cost {price}."],
          ("How much are the cheapest tickets?", price))
    s.say(["Critics praised the music but found the second half too long.",
           "The audience gave the cast a standing ovation."], prob=0.8)
    s.say([f"{writer} started writing the play {p.num(2, 8)} years ago, after hearing a story from a neighbour.",
           f"The idea for the play came to {writer} while visiting the coast."], at=2)
    s.say(["The set is simple: a wooden table, two chairs and a window that changes with the seasons.",
           "Live music is played on stage by three musicians."])
    s.say(["The theatre reopened last year after a long renovation.",
           "There will be a talk with the cast after the Wednesday performances."], prob=0.8)
    return s.text(), s.questions


def n_factory(p: Pool) -> tuple[str, list[tuple[str, str]]]:
    s = Passage(p)
    company, town, manager = p.company(), p.town(), p.person()
    goods = p.pick(["bicycle frames", "solar panels", "kitchen cabinets", "wooden toys", "heat pumps",
                    "glass bottles", "electric scooters", "school furniture"])
    jobs, invest, per_week, area = p.num(40, 600), p.money(5, 120, big=True), p.many(2, 90, 100), p.many(4, 40, 1000)
    year = p.num(2025, 2028)
    s.say([f"{company} will open a factory in {town} that makes {goods}.",
           f"{company} has chosen {town} for its new factory, which will make {goods}."],
          ("What will the factory make?", goods))
    s.say([f"The company is investing {invest} in the site.", f"The investment is worth {invest}."],
          ("How much is the company investing?", invest))
    s.say([f"It will create {jobs} jobs, most of them filled by people from the area.",
           f"About {jobs} people will work there."], ("How many jobs will be created?", str(jobs)))
    s.say([f"Production is due to start in {year}.", f"The first {goods} should leave the factory in {year}."],
          ("When is production due to start?", str(year)))
    s.say([f"At full speed the plant will turn out {per_week} units a week.",
           f"The plan is to make {per_week} units a week."], ("How many units a week will it make?", str(per_week)))
    s.say([f"The building covers {area} square metres of a former army base.",
           f"It will stand on {area} square metres of land next to the motorway."])
    s.say([f"Site manager {manager} said training would begin six months before the doors open.",
           f"\"We looked at twelve towns, and {town} had the people we need,\" said {manager}, who will run the site."],
          ("Who will run the site?", manager))
    s.say(["The site was chosen because of its good road links and a large pool of skilled workers.",
           "The town lost hundreds of jobs when a car parts plant closed ten years ago."], at=2)
    s.say(["Part of the factory's power will come from solar panels on the roof.",
           "The company says the factory will use half the energy of its older plants."])
    s.say(["Local colleges will offer new courses to train people for the jobs.",
           "Some residents are worried about lorry traffic on the narrow roads near the site."], prob=0.8)
    return s.text(), s.questions


FINDS = [  # (site, objects, age range in centuries)
    ("a Roman villa", "coins and a mosaic floor", (16, 19)),
    ("a Viking boat", "iron rivets and a carved prow", (10, 12)),
    ("a medieval bakery", "ovens and bread stamps", (6, 8)),
    ("a Bronze Age farm", "pottery and a bronze axe", (30, 38)),
    ("a sunken trading ship", "jars of wine and glass beads", (20, 25)),
    ("a 17th-century inn", "clay pipes and dice", (3, 4)),
]


def n_dig(p: Pool) -> tuple[str, list[tuple[str, str]]]:
    s = Passage(p)
    town, leader = p.town(), p.person()
    site, items, centuries = p.pick(FINDS)
    count, age, weeks, depth = p.num(30, 900), p.many(*centuries, 100), p.num(3, 20), p.num(1, 6)
    how = p.pick(["builders digging the foundations of a new school", "a farmer ploughing a field",
                  "a dog walker after a landslide", "divers checking a harbour wall"])
    s.say([f"Archaeologists near {town} have uncovered the remains of {site}.",
           f"The remains of {site} have been found near {town}."], ("What was found?", site))
    s.say([f"The site was first spotted by {how}.", f"It was discovered by chance, by {how}."],
          ("Who first found the site?", how))
    s.say([f"Experts believe it is about {age} years old.", f"Tests suggest it is roughly {age} years old."],
          ("How old is the find?", f"{age} years"))
    s.say([f"In {weeks} weeks of digging, the team has recovered {count} objects, including {items}.",
           f"The team has found {count} objects so far, among them {items}."],
          ("How many objects have been found?", str(count)))
    s.say([f"Most of them lay {depth} metres below the surface.", f"The finds lay about {depth} metres down."])
    s.say([f"\"It is the most important find in the region for fifty years,\" said dig leader {leader}.",
           f"Dig leader {leader} said the site would change what is known about the area's history."],
          ("Who leads the dig?", leader))
    s.say([f"A first selection of the objects will go on show in {town} next spring.",
           "The team has asked the public not to visit the site while work continues."], prob=0.8)
    s.say(["The team includes students from three universities and volunteers from the town.",
           f"About {p.num(12, 60)} people are working on the site, many of them volunteers."], at=2)
    s.say(["Every object is photographed and measured before it is lifted out of the ground.",
           "The finds are cleaned in a tent next to the trench and then sent to a laboratory."])
    s.say(["The building work planned for the site has been put on hold until the dig is finished.",
           "Money for the dig came from the town council and a national heritage fund."], prob=0.8)
    return s.text(), s.questions


NARRATIVES = {
    "facility": n_facility, "launch": n_launch, "wildlife": n_wildlife, "final": n_final, "festival": n_festival,
    "storm": n_storm, "exhibition": n_exhibition, "biography": n_biography, "eatery": n_eatery,
    "contest": n_contest, "transit": n_transit, "harvest": n_harvest, "clinic": n_clinic,
    "charity_run": n_charity_run, "reserve": n_reserve, "premiere": n_premiere, "factory": n_factory, "dig": n_dig,
}
SUMMARIZE_TEMPLATES = [
    "Summarize the following passage in two or three sentences.\n\n{passage}",
    "Write a short summary of this text.\n\n{passage}",
    "Summarize the main points of the passage below as three bullet points.\n\n{passage}",
    "Read the passage and give a summary of at most 60 words.\n\nPassage: {passage}",
    "{passage}\n\nSummarize the text above in one paragraph.",
]
QA_TEMPLATES = [
    "Answer the question using only the passage.\n\nPassage: {passage}\n\nQuestion: {question}",
    "Read the passage and answer the question in one sentence.\n\n{passage}\n\nQuestion: {question}",
    "{passage}\n\nBased only on the text above: {question}",
    "Passage:\n{passage}\n\nUsing the passage, answer: {question}",
]


# --- records (extract): each returns ({field: value stated verbatim in the text}, text)

def x_event(p: Pool) -> tuple[dict[str, str], str]:
    kind = p.pick(["Craft Fair", "Jazz Night", "Book Swap", "Charity Quiz", "Choir Concert", "Plant Sale",
                   "Film Evening", "Vintage Market"])
    r = {"event": f"{p.pick(['Spring', 'Summer', 'Autumn', 'Winter'])} {kind}", "date": p.date(),
         "venue": f"{p.surname()} Hall, {p.town()}", "price": p.money(3, 30), "organiser": p.person()}
    doors = p.num(5, 8)
    more = p.sample([
        "Volunteers are still needed to help set up the chairs in the afternoon.",
        "The hall has a lift and an accessible toilet on the ground floor.",
        "Please do not bring your own food or drink.",
        "Last time the tickets sold out a week in advance, so early booking is a good idea.",
        "Dogs are welcome, as long as they are kept on a lead.",
    ], 3)
    text = p.pick([
        f"Hello everyone,\n\nJust a reminder that the {r['event']} takes place on {r['date']} at {r['venue']}. Doors "
        f"open at {doors} p.m. and the evening should finish around {doors + 4}. Tickets cost {r['price']} at the "
        f"door, and children under 12 go free. There will be tea, cake and a raffle, so bring some change. {more} If "
        f"you have any questions, write to {r['organiser']}, who is organising it this year.\n\nSee you there!",
        f"{r['event']} - {r['venue']}\n\nJoin us on {r['date']} for our {r['event'].lower()}. Last year more than "
        f"{p.num(80, 400)} people came, and this year we have even more to offer. Entry is {r['price']} per person; "
        f"all profits go to the hall's new roof. Parking is available behind the building. {more} The event is "
        f"organised by {r['organiser']} and a team of volunteers. Please note that the previous date of {p.day()} "
        "was cancelled.",
    ])
    return r, text


def x_order(p: Pool) -> tuple[dict[str, str], str]:
    product = p.pick(["oak dining table", "pair of walking boots", "espresso machine", "garden bench",
                      "set of kitchen knives", "desk lamp", "winter coat", "mountain bike helmet"])
    qty = p.num(1, 6)
    unit = p.num(15, 400)
    r = {"customer": p.person(), "product": product, "quantity": str(qty), "total": f"{p.symbol}{qty * unit:,}",
         "delivery_date": p.date()}
    order = f"{p.pick(['A', 'B', 'K', 'R'])}{p.num(10000, 99999)}"
    more = p.sample([
        "Please keep the original packaging in case you need to return anything.",
        "Large items are delivered by two people and carried to the room of your choice.",
        "You will receive a text message with a one-hour delivery window the day before.",
        "Our customer service team is available every day from 8 a.m. to 8 p.m.",
    ], 3)
    text = p.pick([
        f"Dear {r['customer']},\n\nThank you for your order {order}. You ordered {qty} x {product} at "
        f"{p.symbol}{unit} each, for a total of {r['total']} including delivery. Your parcel will be delivered on "
        f"{r['delivery_date']} between 8 a.m. and 6 p.m. If nobody is at home, the driver will leave a card with "
        f"instructions. {more} You can return any item within 30 days.\n\nKind regards,\nCustomer Service",
        f"Order {order} was placed by {r['customer']} last week. It contains {qty} x {product} ({p.symbol}{unit} "
        f"each). The customer paid {r['total']} by card. {more} Because the item was out of stock for a week, the "
        f"delivery date was moved to {r['delivery_date']}. The customer asked for the parcel to be left with a "
        "neighbour if necessary.",
    ])
    return r, text


def x_job(p: Pool) -> tuple[dict[str, str], str]:
    title = p.pick(["Warehouse Supervisor", "Junior Accountant", "Line Cook", "Delivery Driver", "Web Developer",
                    "Dental Nurse", "Bike Mechanic", "Customer Support Agent"])
    r = {"job_title": title, "company": p.company(), "city": p.town(),
         "salary": f"{p.num(22, 65)},000 {p.currency} a year",
         "start_date": p.date()}
    more = p.sample([
        "The team is friendly and values people who ask questions.",
        "You will need a driving licence for some of the tasks.",
        "We also offer a pension scheme and free lunches on Fridays.",
        "Part-time hours can be discussed.",
        "The office is close to the station and has secure bicycle parking.",
    ], 3)
    text = p.pick([
        f"{r['company']} is looking for a {title} to join our team in {r['city']}. You will work closely with a "
        f"small team and report to the operations manager. We offer a salary of {r['salary']}, {p.num(25, 30)} days "
        "of paid holiday and a travel allowance. Experience is welcome but not required; full training is given. "
        f"{more} The position starts on {r['start_date']}. To apply, send a short letter and your CV by {p.day()}.",
        f"JOB OPENING: {title}\n\nCompany: {r['company']}\n\nAbout the role: this is a full-time job based in "
        f"{r['city']}, with one day a week from home. The salary is {r['salary']}. You should enjoy solving problems "
        f"and working with people. {more} Start date: {r['start_date']}. Interviews will take place in the two weeks "
        "before.",
    ])
    return r, text


def x_rental(p: Pool) -> tuple[dict[str, str], str]:
    street = p.pick(["Linden Road", "Quay Street", "Orchard Lane", "Elm Terrace", "Castle View", "Park Row"])
    beds = p.num(1, 4)
    rooms = "1 bedroom" if beds == 1 else f"{beds} bedrooms"
    r = {"address": f"{p.num(1, 120)} {street}, {p.town()}", "bedrooms": str(beds),
         "monthly_rent": p.money(600, 2400), "available_from": p.date(), "landlord": p.person()}
    more = p.sample([
        "The building has a shared laundry room in the basement.",
        "A deposit of two months' rent is required.",
        "There is a supermarket and a primary school at the end of the street.",
        "Smoking is not allowed anywhere in the property.",
        "The windows were replaced two years ago, so it stays warm in winter.",
    ], 3)
    text = p.pick([
        f"Bright flat to rent at {r['address']}. It has {rooms}, a small kitchen and a balcony facing the park. The "
        f"rent is {r['monthly_rent']} a month, plus bills. The flat is available from {r['available_from']}. Pets "
        f"are allowed by arrangement. {more} The bus stop is two minutes away and the station ten. For viewings, "
        f"please contact the landlord, {r['landlord']}, in the evenings.",
        f"Hi, I'm {r['landlord']} and I am letting my house at {r['address']} because I am moving abroad for work. "
        f"It has {rooms} and a garden with an apple tree. I'm asking {r['monthly_rent']} per month. It's free from "
        f"{r['available_from']}, and I'd prefer someone who can stay at least a year. {more} The heating was "
        "replaced last winter.",
    ])
    return r, text


def x_appointment(p: Pool) -> tuple[dict[str, str], str]:
    r = {"patient": p.person(), "doctor": f"Dr {p.person()}", "date": p.date(), "time": p.clock(),
         "clinic": f"{p.town()} {p.pick(['Medical Centre', 'Health Clinic', 'Surgery'])}"}
    more = p.sample([
        "The appointment will last about twenty minutes.",
        "Interpreters can be booked on request.",
        "The entrance is on the side of the building, next to the pharmacy.",
        "A blood test may be taken during the visit, so patients should not eat beforehand.",
    ], 3)
    text = p.pick([
        f"Dear {r['patient']},\n\nThis is to confirm your appointment with {r['doctor']} on {r['date']} at "
        f"{r['time']} at the {r['clinic']}. Please arrive ten minutes early and bring a list of any medicines you "
        "take. If you cannot come, call us at least 24 hours before so that another patient can have the slot. "
        f"{more} Parking is free for the first hour.\n\nBest wishes,\nReception",
        f"Appointment note: {r['patient']} called on {p.day()} to book a check-up. The first free slot with "
        f"{r['doctor']} was on {r['date']} at {r['time']}. The patient asked for a reminder by text message. {more} "
        f"Location: {r['clinic']}, ground floor, room {p.num(1, 20)}. Patient has been seen at this practice before.",
    ])
    return r, text


def x_book(p: Pool) -> tuple[dict[str, str], str]:
    title = p.pick(["The Salt Garden", "A Map of Small Rivers", "Letters from the Lighthouse", "The Clockmaker's "
                    "Daughter", "Under the Linden Tree", "The Winter Ledger", "Songs for an Empty Station",
                    "Twelve Bridges"])
    r = {"title": title, "author": p.person(), "year": str(p.num(1950, 2025)),
         "publisher": f"{p.surname()} {p.pick(['Books', 'Press', '& Sons'])}", "pages": str(p.num(120, 620))}
    more = p.sample([
        "The story moves between a fishing village and a busy port city.",
        "Reviewers praised its quiet humour and its careful descriptions of the sea.",
        "The cover shows an old map drawn by the author's grandfather.",
        "Readers' groups often choose it because it is short and easy to discuss.",
    ], 3)
    text = p.pick([
        f"\"{title}\" by {r['author']} was first published in {r['year']} by {r['publisher']}. The novel runs to "
        f"{r['pages']} pages and follows three generations of one family. {more} It sold slowly at first but became "
        f"popular after it was read on the radio. It has since been translated into {p.num(4, 30)} languages, and a "
        "film version is said to be in the works.",
        f"Library record\n\n{r['author']}'s book \"{title}\" ({r['publisher']}, {r['year']}) is a paperback of "
        f"{r['pages']} pages. Our copy is shelved in the local history section. {more} It was donated in "
        f"{p.num(1990, 2024)} and has been borrowed {p.num(10, 200)} times. A second copy is on order because of a "
        "long waiting list.",
    ])
    return r, text


def x_flight(p: Pool) -> tuple[dict[str, str], str]:
    origin, destination = p.towns(2)
    r = {"passenger": p.person(), "flight_number": f"{p.pick(['KX', 'TR', 'NB', 'LW'])}{p.num(100, 9999)}",
         "from": origin, "to": destination, "departure": f"{p.date()} at {p.clock(6, 22)}"}
    more = p.sample([
        "Please have your passport ready at the gate.",
        "Food and drinks can be bought on board.",
        "The gate number will be shown on the screens about an hour before departure.",
        "Passengers with reduced mobility can ask for help at the information desk.",
    ], 3)
    text = p.pick([
        f"Booking confirmation\n\nPassenger: {r['passenger']}\n\nThank you for booking with us. Your flight "
        f"{r['flight_number']} leaves {r['from']} on {r['departure']} and lands in {r['to']} about two hours later. "
        f"Check-in closes 45 minutes before departure. {more} You may bring one cabin bag of up to 10 kilograms. "
        f"Seat {p.num(1, 30)}{p.pick(['A', 'C', 'D', 'F'])} has been reserved for you.",
        f"Dear {r['passenger']}, your travel plans have changed. Because of a strike, your original flight was "
        f"cancelled. You have been moved to flight {r['flight_number']} from {r['from']} to {r['to']}, departing "
        f"{r['departure']}. Your hotel has been told that you will arrive later. {more} We are sorry for the trouble "
        "and have added a meal voucher to your booking.",
    ])
    return r, text


def x_lost_pet(p: Pool) -> tuple[dict[str, str], str]:
    species, colours = p.pick([("cat", ["ginger", "tabby", "black and white"]), ("dog", ["brown", "golden", "black"]),
                               ("rabbit", ["grey", "white", "brown"]), ("parrot", ["green", "grey"]),
                               ("ferret", ["white", "brown"]), ("guinea pig", ["brown and white", "black"])])
    r = {"pet_name": p.pick(["Biscuit", "Pepper", "Mango", "Shadow", "Noodle", "Ziggy", "Clover", "Pickles"]),
         "species": species, "colour": p.pick(colours),
         "last_seen": f"{p.pick(['Mill Lane', 'the bus station', 'Queen Street', 'the allotments'])}, {p.town()}",
         "phone": f"0{p.num(700, 799)} {p.num(100, 999)} {p.num(1000, 9999)}"}
    more = p.sample([
        "We have lived in the area for six years and this has never happened before.",
        "The children are very upset and keep asking when we will find our pet.",
        "Local vets and the animal shelter have already been told.",
        "Please share this message with your neighbours.",
    ], 3)
    text = p.pick([
        f"LOST {species.upper()}! Our {species} {r['pet_name']} has been missing since {p.day()}. {r['pet_name']} is "
        f"{r['colour']}, quite shy, and answers to its name. {r['pet_name']} was last seen near {r['last_seen']}. "
        f"Please check your sheds and garages. {more} If you see {r['pet_name']}, do not chase, just call us on "
        f"{r['phone']}. There is a reward. Thank you!",
        f"Has anyone seen {r['pet_name']}? A {r['colour']} {species}, three years old, friendly with children. "
        f"{more} Last seen on Tuesday evening at {r['last_seen']}. {r['pet_name']} is microchipped and may be hungry "
        f"and scared by now. Any news, however small, please ring {r['phone']} at any time of day.",
    ])
    return r, text


def x_car(p: Pool) -> tuple[dict[str, str], str]:
    model = p.pick(["Skoda Octavia", "Toyota Yaris", "Volvo V60", "Ford Focus", "Renault Clio", "Honda Jazz",
                    "Kia Ceed", "Mazda 3"])
    r = {"make_model": model, "year": str(p.num(2008, 2023)), "mileage_km": f"{p.num(20, 240)},{p.num(100, 999)}",
         "price": p.money(2500, 22000), "seller": p.person()}
    more = p.sample([
        "The cambelt was changed at the last service.",
        "It comes with two keys and a roof rack.",
        "The car has passed its latest safety inspection with no faults.",
        "The interior is clean and the seats show very little wear.",
        "Fuel use is low, about five litres per hundred kilometres.",
    ], 3)
    text = p.pick([
        f"For sale: {model}, first registered in {r['year']}. It has done {r['mileage_km']} km and has a full "
        f"service history. New tyres were fitted last year. {more} Small scratch on the rear bumper, otherwise in "
        f"very good condition. Asking price {r['price']}, no offers. Please contact {r['seller']} to arrange a test "
        "drive.",
        f"I am selling my {model} ({r['year']}) because we have bought a bigger car for the family. The mileage is "
        f"{r['mileage_km']} km. It has always been kept in a garage and never smoked in. {more} I would like "
        f"{r['price']} for it. The car can be seen in {p.town()} at weekends. Ask for {r['seller']}.",
    ])
    return r, text


def x_course(p: Pool) -> tuple[dict[str, str], str]:
    course = p.pick(["Beginner Pottery", "Conversational Spanish", "Introduction to Photography",
                     "Bookkeeping for Small Businesses", "Watercolour Painting", "First Steps in Coding",
                     "Bread Baking", "Yoga for Back Pain"])
    r = {"student": p.person(), "course": course, "teacher": p.person(), "start_date": p.date(),
         "fee": p.money(40, 480)}
    more = p.sample([
        "All materials are included in the price.",
        "Classes are kept small, with no more than twelve students.",
        "Free tea and coffee are available during the break.",
        "Students who attend every session will receive a certificate.",
    ], 3)
    text = p.pick([
        f"Dear {r['student']},\n\nWe are pleased to confirm your place on {course}. The course is taught by "
        f"{r['teacher']} and starts on {r['start_date']}. It runs for {p.num(6, 12)} weeks, one evening a week. "
        f"{more} The fee of {r['fee']} has been received, thank you. Please bring a notebook to the first session. "
        "If you need to cancel, let us know two weeks before the start.",
        f"Enrolment form received on {p.day()}. Student name: {r['student']}. Chosen course: {course}, with "
        f"{r['teacher']}. First class: {r['start_date']}, room {p.num(1, 30)}. {more} The student paid the full fee "
        f"of {r['fee']} online and asked whether a parking permit is included. It is not; permits can be bought at "
        "reception.",
    ])
    return r, text


def x_repair(p: Pool) -> tuple[dict[str, str], str]:
    device = p.pick(["washing machine", "laptop", "phone", "coffee machine", "television", "electric bike",
                     "fridge", "printer"])
    problem = p.pick(["does not turn on", "makes a loud noise", "has a cracked screen", "leaks water",
                      "keeps switching off", "will not charge"])
    r = {"ticket_id": f"RT-{p.num(1000, 9999)}", "customer": p.person(), "device": device, "problem": problem,
         "due_date": p.date()}
    more = p.sample([
        "Please remove any cases or accessories before handing in a device.",
        "Most repairs come with a six-month guarantee.",
        "The workshop is open from Monday to Saturday, 9 a.m. to 5 p.m.",
        "Parts are ordered from the manufacturer whenever possible.",
    ], 3)
    text = p.pick([
        f"Repair ticket {r['ticket_id']} was opened for {r['customer']}. The customer's {device} {problem}. The "
        f"technician checked it on arrival and ordered a new part, which should come within a week. {more} The "
        f"repair is covered by the guarantee, so there is no charge. The {device} should be ready by "
        f"{r['due_date']}; the customer will get a text when it is.",
        f"Hello {r['customer']},\n\nWe have received your {device} (ticket {r['ticket_id']}). You told us that it "
        f"{problem}. Our workshop is busy this month, but we expect to finish the repair by {r['due_date']}. If we "
        f"find other faults, we will call you before doing any work. {more} The inspection fee is "
        f"{p.money(15, 45)}.\n\nThe Repair Team",
    ])
    return r, text


def x_donation(p: Pool) -> tuple[dict[str, str], str]:
    r = {"donor": p.person(), "amount": p.money(10, 5000),
         "charity": f"{p.town()} {p.pick(['Food Bank', 'Animal Rescue', 'Youth Orchestra', 'Lifeboat Fund'])}",
         "date": p.date(), "method": p.pick(["bank transfer", "credit card", "cheque", "cash"])}
    more = p.sample([
        "This winter we expect more families than ever to ask for help.",
        "Gifts like yours pay for food, heating and transport for our volunteers.",
        "We are a small charity run almost entirely by volunteers.",
        "A thank-you card has been posted to the donor's home address.",
    ], 3)
    text = p.pick([
        f"Dear {r['donor']},\n\nOn behalf of everyone at the {r['charity']}, thank you for your gift of "
        f"{r['amount']}, received on {r['date']} by {r['method']}. Your donation will help us through the winter, "
        f"when demand is highest. {more} Last year we helped {p.num(200, 3000)} families. Please keep this letter as "
        "your receipt.\n\nWith gratitude,\nThe Trustees",
        f"Donation record: {r['amount']} from {r['donor']}, paid by {r['method']} on {r['date']}. The money is for "
        f"the {r['charity']}. The donor asked to stay anonymous in the newsletter. {more} This is the donor's "
        f"{p.pick(['second', 'third', 'fifth'])} gift this year.",
    ])
    return r, text


def x_hotel(p: Pool) -> tuple[dict[str, str], str]:
    r = {"guest": p.person(), "hotel": f"Hotel {p.surname()}, {p.town()}", "check_in": p.date(),
         "nights": str(p.num(1, 9)), "room_type": p.pick(["double room", "single room", "family suite",
                                                          "twin room with balcony"])}
    more = p.sample([
        "The hotel is a ten-minute walk from the old town.",
        "Parking is available in the courtyard for a small daily fee.",
        "The kitchen can prepare meals for guests with allergies if told in advance.",
        "Bicycles can be rented at reception.",
    ], 3)
    text = p.pick([
        f"Dear {r['guest']},\n\nYour reservation at {r['hotel']} is confirmed. You will arrive on {r['check_in']} "
        f"and stay {r['nights']} nights in a {r['room_type']}. Check-in is from 3 p.m. Breakfast is served from 7 to "
        f"10 in the garden room. {more} Free cancellation is possible up to two days before arrival.\n\nWe look "
        "forward to welcoming you.",
        f"Reservation note: {r['guest']} phoned to book a {r['room_type']} at {r['hotel']}. Arrival {r['check_in']}, "
        f"{r['nights']} nights. The guest will arrive late, after 10 p.m., and asked for a quiet room away from the "
        f"lift. {more} Deposit of {p.money(30, 200)} taken by card.",
    ])
    return r, text


def x_shipment(p: Pool) -> tuple[dict[str, str], str]:
    r = {"tracking_number": f"{p.pick(['ZX', 'PL', 'QT'])}{p.num(10000000, 99999999)}", "sender": p.company(),
         "recipient": p.person(), "weight_kg": f"{p.num(1, 40)}.{p.num(0, 9)}", "carrier":
             p.pick(["FastLine Couriers", "BlueBox Parcel", "Harbour Freight", "SwiftPost"])}
    street = p.pick(["Hill Road", "Dock Street", "Fern Close"])
    more = p.sample([
        "Parcels that cannot be delivered are taken to the nearest pick-up point.",
        "The parcel should be checked for damage before signing.",
        "Deliveries are made between 7 a.m. and 7 p.m. from Monday to Saturday.",
        "Returns can be arranged online within fourteen days.",
    ], 3)
    text = p.pick([
        f"Your parcel is on its way! {r['sender']} has sent your order with {r['carrier']}. Tracking number: "
        f"{r['tracking_number']}. The parcel weighs {r['weight_kg']} kg and is addressed to {r['recipient']}. It "
        f"will need a signature on delivery. {more} You can follow it online or change the delivery day up to 8 p.m. "
        "the night before.",
        f"Shipping label summary: sent by {r['sender']} to {r['recipient']}, {p.num(1, 90)} {street}, {p.town()}. "
        f"Carrier: {r['carrier']}. Weight {r['weight_kg']} kg. Tracking {r['tracking_number']}. Handle with care: "
        f"the box contains glass. {more} Two earlier attempts to deliver failed.",
    ])
    return r, text


def x_talk(p: Pool) -> tuple[dict[str, str], str]:
    topic = p.pick(["Cleaner Rivers in Small Towns", "Teaching Maths with Games", "Batteries After Lithium",
                    "How Bees Find Their Way", "Designing Quiet Cities", "Saving Old Seeds"])
    r = {"speaker": p.person(), "talk_title": topic, "room": f"Room {p.num(1, 12)}{p.pick(['A', 'B', ''])}",
         "time": p.clock(9, 17), "day": p.pick(["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"])}
    more = p.sample([
        "The session will be recorded for people who cannot attend.",
        "Questions can also be sent in writing before the talk.",
        "The room is on the second floor, next to the library.",
        "Lunch will be served in the main hall straight after the morning talks.",
    ], 3)
    text = p.pick([
        f"Programme change: the talk \"{topic}\" by {r['speaker']} has moved to {r['room']}, because more people "
        f"signed up than expected. {more} It still starts at {r['time']} on {r['day']}. The talk lasts 40 minutes, "
        "with time for questions afterwards. Slides will be shared on the conference website the same evening.",
        f"{r['speaker']} will speak about \"{topic}\" on {r['day']} at {r['time']} in {r['room']}. "
        f"{r['speaker'].split()[0]} has worked in this field for {p.num(5, 30)} years and advises the regional "
        f"government. Seats are limited, so please arrive early. {more} Coffee is served in the hall before the "
        "session.",
    ])
    return r, text


def x_fault(p: Pool) -> tuple[dict[str, str], str]:
    machine = p.pick(["packing machine", "forklift truck", "conveyor belt", "industrial oven", "air compressor",
                      "cutting press"])
    r = {"machine": machine, "site": f"{p.company()} plant, {p.town()}", "reported_by": p.person(),
         "date": p.date(), "repair_cost": p.money(200, 9000)}
    more = p.sample([
        "The machine had been serviced only two months earlier.",
        "Staff were moved to other lines while the work was done.",
        "A full safety check of the area was carried out before work restarted.",
        "The supplier has been asked whether other machines of the same type are affected.",
    ], 3)
    text = p.pick([
        f"Fault report\n\nOn {r['date']}, {r['reported_by']} reported that the {machine} at the {r['site']} had "
        "stopped during the morning shift. Nobody was hurt. An engineer found a broken belt and a worn bearing. "
        f"{more} Production was stopped for {p.num(2, 9)} hours. The repair cost {r['repair_cost']}, including "
        "parts. The machine will be checked every month from now on.",
        f"Hi team, a quick note about the {machine} at the {r['site']}. {r['reported_by']} noticed smoke coming from "
        f"it on {r['date']} and switched it off at once, which was the right thing to do. {more} The repair has now "
        f"been done, at a cost of {r['repair_cost']}. Please report anything unusual straight away.",
    ])
    return r, text


RECORDS = {
    "event": x_event, "order": x_order, "job": x_job, "rental": x_rental, "appointment": x_appointment,
    "book": x_book, "flight": x_flight, "lost_pet": x_lost_pet, "car": x_car, "course": x_course,
    "repair": x_repair, "donation": x_donation, "hotel": x_hotel, "shipment": x_shipment, "talk": x_talk,
    "fault": x_fault,
}
EXTRACT_TEMPLATES = [
    "Extract the following fields from the text as JSON with keys {keys}.\n\nText: {passage}",
    "From the message below, fill in the values of this JSON object, copied exactly as they appear:\n{skeleton}"
    "\n\n{passage}",
    "Read the text and fill in this JSON object:\n{skeleton}\n\nText:\n{passage}",
    "{passage}\n\nExtract {keys} from the text above. Answer with JSON only.",
]


# --- code (code_edit): (name, variable to rename, its new name, source without type hints or docstrings)

def code(src: str) -> str:
    return textwrap.dedent(src).strip("\n")


SNIPPETS = [
    ("cart_total", "t", "subtotal", code("""
        def cart_total(items, tax_rate, discount_over=100):
            t = 0
            for item in items:
                t += item["price"] * item["qty"]
            if t > discount_over:
                t = t * 0.95
            tax = t * tax_rate
            return round(t + tax, 2)
    """)),
    ("letter_grade", "avg", "average_score", code("""
        def letter_grade(scores):
            if not scores:
                return None
            avg = sum(scores) / len(scores)
            if avg >= 90:
                return "A"
            elif avg >= 80:
                return "B"
            elif avg >= 70:
                return "C"
            elif avg >= 60:
                return "D"
            return "F"
    """)),
    ("daily_max_temperature", "d", "max_by_day", code("""
        def daily_max_temperature(lines):
            d = {}
            for line in lines:
                day, value = line.strip().split(",")
                value = float(value)
                if day not in d or value > d[day]:
                    d[day] = value
            return d
    """)),
    ("next_invoice_number", "n", "highest", code("""
        def next_invoice_number(existing, prefix="INV-"):
            n = 0
            for code in existing:
                if code.startswith(prefix):
                    number = int(code[len(prefix):])
                    if number > n:
                        n = number
            return f"{prefix}{n + 1:04d}"
    """)),
    ("split_bill", "x", "share", code("""
        def split_bill(total, people, tip_percent=10):
            if people <= 0:
                raise ValueError("people must be positive")
            with_tip = total * (1 + tip_percent / 100)
            x = round(with_tip / people, 2)
            shares = [x] * people
            shares[-1] = round(with_tip - x * (people - 1), 2)
            return shares
    """)),
    ("overdue_loans", "res", "overdue", code("""
        def overdue_loans(loans, today, fine_per_day=0.25):
            res = []
            for loan in loans:
                days_late = (today - loan["due"]).days
                if days_late > 0:
                    res.append({
                        "title": loan["title"],
                        "borrower": loan["borrower"],
                        "fine": round(days_late * fine_per_day, 2),
                    })
            res.sort(key=lambda r: r["fine"], reverse=True)
            return res
    """)),
    ("normalize_phone", "s", "digits", code("""
        def normalize_phone(number, country_code="44"):
            s = "".join(ch for ch in number if ch.isdigit())
            if s.startswith("00"):
                s = s[2:]
            elif s.startswith("0"):
                s = country_code + s[1:]
            if len(s) < 10:
                raise ValueError(f"too short: {number}")
            return "+" + s
    """)),
    ("run_length_encode", "c", "count", code("""
        def run_length_encode(text):
            if not text:
                return ""
            out = []
            prev, c = text[0], 1
            for ch in text[1:]:
                if ch == prev:
                    c += 1
                else:
                    out.append(f"{c}{prev}")
                    prev, c = ch, 1
            out.append(f"{c}{prev}")
            return "".join(out)
    """)),
    ("group_by_city", "g", "groups", code("""
        def group_by_city(people):
            g = {}
            for person in people:
                city = person.get("city", "unknown").title()
                g.setdefault(city, []).append(person["name"])
            for city in g:
                g[city].sort()
            return g
    """)),
    ("top_customers", "tot", "totals", code("""
        def top_customers(orders, n=3):
            tot = {}
            for order in orders:
                name = order["customer"]
                tot[name] = tot.get(name, 0) + order["amount"]
            ranked = sorted(tot.items(), key=lambda kv: kv[1], reverse=True)
            return [name for name, amount in ranked[:n]]
    """)),
    ("bmi_category", "b", "bmi", code("""
        def bmi_category(weight_kg, height_m):
            b = weight_kg / (height_m ** 2)
            if b < 18.5:
                label = "underweight"
            elif b < 25:
                label = "normal"
            elif b < 30:
                label = "overweight"
            else:
                label = "obese"
            return round(b, 1), label
    """)),
    ("parse_duration", "tot", "seconds", code("""
        def parse_duration(text):
            units = {"h": 3600, "m": 60, "s": 1}
            tot = 0
            number = ""
            for ch in text.strip().lower():
                if ch.isdigit():
                    number += ch
                elif ch in units and number:
                    tot += int(number) * units[ch]
                    number = ""
                else:
                    raise ValueError(f"bad duration: {text}")
            return tot
    """)),
    ("restock_list", "lst", "to_order", code("""
        def restock_list(stock, minimum, batch=10):
            lst = []
            for item, count in stock.items():
                need = minimum.get(item, 0) - count
                if need > 0:
                    batches = (need + batch - 1) // batch
                    lst.append((item, batches * batch))
            lst.sort()
            return lst
    """)),
    ("slugify", "s", "slug", code("""
        import re


        def slugify(title, max_length=50):
            s = title.lower().strip()
            s = re.sub(r"[^a-z0-9\\s-]", "", s)
            s = re.sub(r"[\\s-]+", "-", s)
            s = s.strip("-")
            if len(s) > max_length:
                s = s[:max_length].rstrip("-")
            return s
    """)),
    ("merge_intervals", "res", "merged", code("""
        def merge_intervals(intervals):
            res = []
            for start, end in sorted(intervals):
                if res and start <= res[-1][1]:
                    res[-1][1] = max(res[-1][1], end)
                else:
                    res.append([start, end])
            return [tuple(pair) for pair in res]
    """)),
    ("count_weekdays", "n", "working_days", code("""
        import datetime


        def count_weekdays(start, end, holidays=()):
            n = 0
            day = start
            while day <= end:
                if day.weekday() < 5 and day not in holidays:
                    n += 1
                day += datetime.timedelta(days=1)
            return n
    """)),
    ("read_settings", "d", "settings", code("""
        def read_settings(path):
            d = {}
            with open(path) as f:
                for line in f:
                    line = line.strip()
                    if not line or line.startswith("#"):
                        continue
                    key, _, value = line.partition("=")
                    d[key.strip()] = value.strip()
            return d
    """)),
    ("password_problems", "p", "candidate", code("""
        def password_problems(p, min_length=10):
            problems = []
            if len(p) < min_length:
                problems.append(f"shorter than {min_length} characters")
            if not any(ch.isupper() for ch in p):
                problems.append("no capital letter")
            if not any(ch.isdigit() for ch in p):
                problems.append("no digit")
            if p.lower() in ("password", "letmein", "qwerty"):
                problems.append("too common")
            return problems
    """)),
    ("distance_km", "a", "half_chord", code("""
        import math


        def distance_km(lat1, lon1, lat2, lon2):
            r = 6371.0
            p1, p2 = math.radians(lat1), math.radians(lat2)
            dp = math.radians(lat2 - lat1)
            dl = math.radians(lon2 - lon1)
            a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
            return 2 * r * math.asin(math.sqrt(a))
    """)),
    ("paginate", "k", "per_page", code("""
        def paginate(items, page, k=20):
            if page < 1:
                raise ValueError("pages start at 1")
            start = (page - 1) * k
            chunk = items[start:start + k]
            pages = (len(items) + k - 1) // k
            return {"items": chunk, "page": page, "pages": pages, "has_next": page < pages}
    """)),
    ("mask_card_number", "d", "digits", code("""
        def mask_card_number(number, visible=4):
            d = number.replace(" ", "").replace("-", "")
            if not d.isdigit() or len(d) < 12:
                raise ValueError("not a card number")
            masked = "*" * (len(d) - visible) + d[-visible:]
            groups = [masked[i:i + 4] for i in range(0, len(masked), 4)]
            return " ".join(groups)
    """)),
    ("longest_streak", "cur", "current", code("""
        def longest_streak(days):
            if not days:
                return 0
            days = sorted(set(days))
            best = cur = 1
            for prev, day in zip(days, days[1:]):
                if (day - prev).days == 1:
                    cur += 1
                    best = max(best, cur)
                else:
                    cur = 1
            return best
    """)),
    ("conversion_table", "rows", "lines", code("""
        def conversion_table(start, stop, step=5):
            rows = ["Celsius | Fahrenheit", "--------+-----------"]
            c = start
            while c <= stop:
                f = c * 9 / 5 + 32
                rows.append(f"{c:7} | {f:10.1f}")
                c += step
            return "\\n".join(rows)
    """)),
    ("student_averages", "m", "marks", code("""
        import csv


        def student_averages(path):
            m = {}
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    m.setdefault(row["student"], []).append(float(row["score"]))
            return {name: round(sum(v) / len(v), 1) for name, v in m.items()}
    """)),
    ("shipping_cost", "w", "weight_kg", code("""
        def shipping_cost(w, zone):
            rates = {"local": 2.5, "national": 4.0, "europe": 9.0, "world": 15.0}
            if zone not in rates:
                raise KeyError(zone)
            cost = rates[zone]
            if w > 2:
                cost += (w - 2) * rates[zone] * 0.4
            if w > 30:
                raise ValueError("too heavy for a parcel")
            return round(cost, 2)
    """)),
    ("wrap_text", "cur", "line", code("""
        def wrap_text(text, width=40):
            lines = []
            cur = ""
            for word in text.split():
                if cur and len(cur) + 1 + len(word) > width:
                    lines.append(cur)
                    cur = word
                else:
                    cur = f"{cur} {word}" if cur else word
            if cur:
                lines.append(cur)
            return lines
    """)),
    ("unique_emails", "e", "address", code("""
        def unique_emails(emails):
            seen = set()
            out = []
            for e in emails:
                e = e.strip().lower()
                if "@" not in e or e in seen:
                    continue
                seen.add(e)
                out.append(e)
            return out
    """)),
    ("duration_label", "s", "seconds", code("""
        def duration_label(s):
            hours, rest = divmod(int(s), 3600)
            minutes, s = divmod(rest, 60)
            parts = []
            if hours:
                parts.append(f"{hours} h")
            if minutes:
                parts.append(f"{minutes} min")
            if s or not parts:
                parts.append(f"{s} s")
            return " ".join(parts)
    """)),
    ("tally_votes", "c", "counts", code("""
        def tally_votes(ballots):
            c = {}
            for name in ballots:
                name = name.strip().title()
                c[name] = c.get(name, 0) + 1
            best = max(c.values())
            winners = sorted(name for name, votes in c.items() if votes == best)
            return winners, c
    """)),
    ("monthly_payment", "r", "monthly_rate", code("""
        def monthly_payment(principal, annual_rate, years):
            n = years * 12
            r = annual_rate / 100 / 12
            if r == 0:
                return round(principal / n, 2)
            payment = principal * r * (1 + r) ** n / ((1 + r) ** n - 1)
            return round(payment, 2)
    """)),
    ("column_sums", "s", "sums", code("""
        def column_sums(rows):
            if not rows:
                return []
            s = [0] * len(rows[0])
            for row in rows:
                if len(row) != len(s):
                    raise ValueError("rows have different lengths")
                for i, value in enumerate(row):
                    s[i] += value
            return s
    """)),
    ("parse_query", "q", "query", code("""
        def parse_query(q):
            params = {}
            if q.startswith("?"):
                q = q[1:]
            for pair in q.split("&"):
                if not pair:
                    continue
                key, _, value = pair.partition("=")
                params.setdefault(key, []).append(value)
            return params
    """)),
    ("format_bytes", "n", "size", code("""
        def format_bytes(n):
            units = ["B", "KB", "MB", "GB", "TB"]
            i = 0
            while n >= 1024 and i < len(units) - 1:
                n /= 1024
                i += 1
            if i == 0:
                return f"{n} {units[i]}"
            return f"{n:.1f} {units[i]}"
    """)),
    ("scale_recipe", "f", "factor", code("""
        def scale_recipe(ingredients, servings_from, servings_to):
            f = servings_to / servings_from
            scaled = {}
            for name, (amount, unit) in ingredients.items():
                new_amount = amount * f
                if unit in ("g", "ml"):
                    new_amount = round(new_amount)
                else:
                    new_amount = round(new_amount, 1)
                scaled[name] = (new_amount, unit)
            return scaled
    """)),
    ("leaderboard", "res", "table", code("""
        def leaderboard(scores):
            ordered = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
            res = []
            rank = 0
            previous = None
            for position, (name, score) in enumerate(ordered, start=1):
                if score != previous:
                    rank = position
                    previous = score
                res.append((rank, name, score))
            return res
    """)),
    ("count_log_levels", "c", "counts", code("""
        def count_log_levels(path):
            c = {"ERROR": 0, "WARNING": 0, "INFO": 0}
            with open(path) as f:
                for line in f:
                    for level in c:
                        if f"[{level}]" in line:
                            c[level] += 1
                            break
            return c
    """)),
    ("is_valid_isbn10", "t", "checksum", code("""
        def is_valid_isbn10(code):
            code = code.replace("-", "").upper()
            if len(code) != 10:
                return False
            t = 0
            for i, ch in enumerate(code):
                if ch == "X" and i == 9:
                    value = 10
                elif ch.isdigit():
                    value = int(ch)
                else:
                    return False
                t += (10 - i) * value
            return t % 11 == 0
    """)),
    ("to_minutes", "h", "hours", code("""
        def to_minutes(clock):
            h, m = clock.split(":")
            return int(h) * 60 + int(m)


        def minutes_between(start, end):
            diff = to_minutes(end) - to_minutes(start)
            if diff < 0:
                diff += 24 * 60
            return diff
    """)),
    ("rgb_to_hex", "v", "channel", code("""
        def rgb_to_hex(r, g, b):
            for v in (r, g, b):
                if not 0 <= v <= 255:
                    raise ValueError(f"out of range: {v}")
            return "#{:02x}{:02x}{:02x}".format(r, g, b)


        def hex_to_rgb(code):
            code = code.lstrip("#")
            return tuple(int(code[i:i + 2], 16) for i in (0, 2, 4))
    """)),
    ("water_bill", "u", "usage_m3", code("""
        def water_bill(u, standing_charge=8.0):
            tiers = [(10, 1.2), (20, 1.8), (None, 2.6)]
            bill = standing_charge
            remaining = u
            for size, price in tiers:
                used = remaining if size is None else min(remaining, size)
                bill += used * price
                remaining -= used
                if remaining <= 0:
                    break
            return round(bill, 2)
    """)),
    ("parking_fee", "mins", "minutes", code("""
        import math


        def parking_fee(entry, leave, hourly=2.0, daily_cap=15.0):
            mins = (leave - entry).total_seconds() / 60
            if mins <= 15:
                return 0.0
            hours = math.ceil(mins / 60)
            days, hours = divmod(hours, 24)
            fee = days * daily_cap + min(hours * hourly, daily_cap)
            return round(fee, 2)
    """)),
    ("free_slots", "cur", "cursor", code("""
        def free_slots(busy, day_start, day_end, min_minutes=30):
            slots = []
            cur = day_start
            for start, end in sorted(busy):
                if start - cur >= min_minutes:
                    slots.append((cur, start))
                cur = max(cur, end)
            if day_end - cur >= min_minutes:
                slots.append((cur, day_end))
            return slots
    """)),
    ("sales_by_month", "m", "months", code("""
        def sales_by_month(records):
            m = {}
            for record in records:
                key = record["date"][:7]
                m[key] = m.get(key, 0) + record["quantity"] * record["unit_price"]
            return dict(sorted(m.items()))
    """)),
    ("BankAccount", "amt", "amount", code("""
        class BankAccount:
            def __init__(self, owner, balance=0):
                self.owner = owner
                self.balance = balance
                self.history = []

            def deposit(self, amt):
                if amt <= 0:
                    raise ValueError("deposit must be positive")
                self.balance += amt
                self.history.append(("deposit", amt))

            def withdraw(self, amt):
                if amt > self.balance:
                    raise ValueError("insufficient funds")
                self.balance -= amt
                self.history.append(("withdraw", amt))
    """)),
    ("Playlist", "s", "song", code("""
        class Playlist:
            def __init__(self, name):
                self.name = name
                self.songs = []

            def add(self, title, seconds):
                self.songs.append((title, seconds))

            def remove(self, title):
                self.songs = [s for s in self.songs if s[0] != title]

            def total_minutes(self):
                return round(sum(s[1] for s in self.songs) / 60, 1)
    """)),
    ("GradeBook", "marks", "student_marks", code("""
        class GradeBook:
            def __init__(self):
                self.g = {}

            def add_grade(self, student, grade):
                self.g.setdefault(student, []).append(grade)

            def average(self, student):
                marks = self.g.get(student, [])
                return sum(marks) / len(marks) if marks else None

            def best_student(self):
                return max(self.g, key=self.average)
    """)),
    ("rolling_sum_alerts", "w", "window", code("""
        def rolling_sum_alerts(readings, limit, w=3):
            alerts = []
            for i in range(len(readings) - w + 1):
                total = sum(readings[i:i + w])
                if total > limit:
                    alerts.append((i, total))
            return alerts
    """)),
    ("top_words", "freq", "counts", code("""
        def top_words(text, n=5, stopwords=("the", "a", "and", "of", "to")):
            freq = {}
            for word in text.lower().split():
                word = word.strip(".,;:!?'()")
                if not word or word in stopwords:
                    continue
                freq[word] = freq.get(word, 0) + 1
            ranked = sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))
            return ranked[:n]
    """)),
    ("savings_plan", "bal", "balance", code("""
        def savings_plan(start, rate_percent, years, yearly_deposit=0):
            bal = start
            plan = []
            for year in range(1, years + 1):
                bal = bal * (1 + rate_percent / 100) + yearly_deposit
                plan.append((year, round(bal, 2)))
            return plan
    """)),
    ("receipt_total", "acc", "running_total", code("""
        def receipt_total(lines):
            acc = 0.0
            items = []
            for line in lines:
                if not line.strip():
                    continue
                name, price = line.rsplit(" ", 1)
                price = float(price.replace(",", "."))
                acc += price
                items.append((name.strip(), price))
            return items, round(acc, 2)
    """)),
    ("days_in_month", "d", "days", code("""
        def days_in_month(year, month):
            if month == 2:
                leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
                d = 29 if leap else 28
            elif month in (4, 6, 9, 11):
                d = 30
            else:
                d = 31
            return d
    """)),
    ("pack_batches", "cur", "batch", code("""
        def pack_batches(files, limit_mb):
            batches = []
            cur, size = [], 0
            for name, mb in sorted(files, key=lambda f: f[1], reverse=True):
                if mb > limit_mb:
                    raise ValueError(f"{name} is larger than the limit")
                if size + mb > limit_mb:
                    batches.append(cur)
                    cur, size = [], 0
                cur.append(name)
                size += mb
            if cur:
                batches.append(cur)
            return batches
    """)),
    ("rows_with_repeats", "s", "seen", code("""
        def rows_with_repeats(grid):
            bad = []
            for index, row in enumerate(grid):
                s = set()
                for value in row:
                    if value == 0:
                        continue
                    if value in s:
                        bad.append(index)
                        break
                    s.add(value)
            return bad
    """)),
    ("Thermostat", "t", "target", code("""
        class Thermostat:
            def __init__(self, t=20.0, margin=0.5):
                self.t = t
                self.margin = margin

            def set_target(self, t):
                self.t = max(5.0, min(30.0, t))

            def action(self, current):
                if current < self.t - self.margin:
                    return "heat"
                if current > self.t + self.margin:
                    return "cool"
                return "idle"
    """)),
    ("Inventory", "q", "quantity", code("""
        class Inventory:
            def __init__(self):
                self.items = {}

            def add(self, name, q=1):
                self.items[name] = self.items.get(name, 0) + q

            def remove(self, name, q=1):
                if self.items.get(name, 0) < q:
                    raise ValueError(f"not enough {name}")
                self.items[name] -= q

            def report(self):
                return [f"{name}: {q}" for name, q in sorted(self.items.items())]
    """)),
    ("age_on", "a", "age", code("""
        def age_on(birth, day):
            a = day.year - birth.year
            if (day.month, day.day) < (birth.month, birth.day):
                a -= 1
            if a < 0:
                raise ValueError("day is before birth")
            return a
    """)),
    ("to_base", "n", "value", code("""
        def to_base(n, base=2):
            if not 2 <= base <= 16:
                raise ValueError("base must be between 2 and 16")
            digits = "0123456789abcdef"
            if n == 0:
                return "0"
            sign = "-" if n < 0 else ""
            n = abs(n)
            out = []
            while n:
                n, rest = divmod(n, base)
                out.append(digits[rest])
            return sign + "".join(reversed(out))
    """)),
    ("pluralize", "w", "word", code("""
        def pluralize(w, count):
            if count == 1:
                return f"{count} {w}"
            if w.endswith(("s", "x", "ch", "sh")):
                plural = w + "es"
            elif w.endswith("y") and w[-2:-1] not in "aeiou":
                plural = w[:-1] + "ies"
            else:
                plural = w + "s"
            return f"{count} {plural}"
    """)),
    ("merge_logs", "out", "merged", code("""
        def merge_logs(first, second):
            out = []
            i = j = 0
            while i < len(first) and j < len(second):
                if first[i]["time"] <= second[j]["time"]:
                    out.append(first[i])
                    i += 1
                else:
                    out.append(second[j])
                    j += 1
            out.extend(first[i:])
            out.extend(second[j:])
            return out
    """)),
]
CODE_EDITS = {  # type_doc by the snippet's shape; the others fit any
    "type_doc": {
        "function": ["Add type hints and a docstring to this Python function:\n\n```python\n{code}\n```",
                     "Add type annotations and a Google-style docstring to the following function. Do not change "
                     "its logic.\n\n```python\n{code}\n```"],
        "functions": ["Add type hints and a docstring to each of these Python functions:\n\n```python\n{code}\n```",
                      "Add type annotations and Google-style docstrings to the following functions. Do not change "
                      "their logic.\n\n```python\n{code}\n```"],
        "class": ["Add type hints and docstrings to this Python class and its methods:\n\n```python\n{code}\n```",
                  "Add type annotations to every method of this class, and a docstring to the class and to each "
                  "method.\n\n```python\n{code}\n```"],
    },
    "rename": ["Rename the variable `{old}` to `{new}` in this code:\n\n```python\n{code}\n```",
               "Rename `{old}` to `{new}` everywhere in the code below and show the full code.\n\n```python\n"
               "{code}\n```"],
    "docstrings": ["Add a docstring to each function in this code:\n\n```python\n{code}\n```",
                   "Write a short docstring for every function below and return the complete code.\n\n```python\n"
                   "{code}\n```"],
    "comments": ["Add comments to this Python code explaining each step. Keep the code itself unchanged."
                 "\n\n```python\n{code}\n```",
                 "Add a comment above each block of this code that explains what it does.\n\n```python\n{code}\n```"],
}


def split_three(rng: random.Random, items: list, policy: int, bench: int) -> dict[str, list]:
    items = list(items)
    rng.shuffle(items)
    return {"policy": items[:policy], "bench": items[policy:policy + bench], "train": items[policy + bench:]}


def snippet_shape(src: str) -> str:
    if src.startswith("class "):
        return "class"
    return "functions" if sum(line.startswith("def ") for line in src.splitlines()) > 1 else "function"


def check_snippet(name: str, old: str, new: str, src: str) -> None:
    ast.parse(src)
    lines = src.count("\n") + 1
    assert 5 <= lines <= 30, (name, lines)
    assert re.search(rf"\b{old}\b", src) and not re.search(rf"\b{new}\b", src), (name, old, new)
    assert '"""' not in src and "->" not in src, name  # neither docstrings nor type hints yet


def narrative_prompts(pool: Pool, domains: list[str], task: str, count: int) -> list[str]:
    out: list[str] = []
    i = 0
    while len(out) < count:
        pool.new_text()
        passage, questions = NARRATIVES[domains[i % len(domains)]](pool)
        i += 1
        words = len(passage.split())
        assert 80 <= words <= 250, (domains[(i - 1) % len(domains)], words)
        assert all(answer.lower() in passage.lower() for _, answer in questions), passage
        if task == "summarize":
            prompt = pool.pick(SUMMARIZE_TEMPLATES).format(passage=passage)
        else:
            question, _ = pool.pick(questions)
            prompt = pool.pick(QA_TEMPLATES).format(passage=passage, question=question)
        if prompt not in out:
            out.append(prompt)
    return out


def extract_prompts(pool: Pool, domains: list[str], count: int) -> list[str]:
    out: list[str] = []
    i = 0
    while len(out) < count:
        pool.new_text()
        record, passage = RECORDS[domains[i % len(domains)]](pool)
        i += 1
        assert all(value in passage for value in record.values()), (record, passage)
        assert 60 <= len(passage.split()) <= 250, passage
        names = list(record)
        keys = ", ".join(names[:-1]) + f" and {names[-1]}"
        prompt = pool.pick(EXTRACT_TEMPLATES).format(keys=keys, skeleton=json.dumps(dict.fromkeys(names, "")),
                                                    passage=passage)
        if prompt not in out:
            out.append(prompt)
    return out


def code_edit_prompts(rng: random.Random, names: list[str], count: int) -> list[str]:
    """Round-robin over the four edits, each snippet in as few prompts as the count allows."""
    snippets = {s[0]: s for s in SNIPPETS if s[0] in names}
    candidates: dict[str, list[tuple[tuple[str, ...], str]]] = {kind: [] for kind in CODE_EDITS}
    for name, old, new, src in snippets.values():
        shape = snippet_shape(src)
        candidates["type_doc"].append(((name,), rng.choice(CODE_EDITS["type_doc"][shape]).format(code=src)))
        candidates["rename"].append(((name,), rng.choice(CODE_EDITS["rename"]).format(old=old, new=new, code=src)))
        candidates["comments"].append(((name,), rng.choice(CODE_EDITS["comments"]).format(code=src)))
        if shape != "function":
            candidates["docstrings"].append(((name,), rng.choice(CODE_EDITS["docstrings"]).format(code=src)))
    singles = [s for s in snippets.values() if snippet_shape(s[3]) == "function" and not s[3].startswith("import")]
    rng.shuffle(singles)
    for a, b in zip(singles[::2], singles[1::2]):
        src = a[3] + "\n\n\n" + b[3]
        candidates["docstrings"].append(((a[0], b[0]), rng.choice(CODE_EDITS["docstrings"]).format(code=src)))
    for kind in candidates:
        rng.shuffle(candidates[kind])
    out: list[str] = []
    uses = dict.fromkeys(snippets, 0)
    for cap in (1, 2, 3, 4):
        progress = True
        while len(out) < count and progress:
            progress = False
            for kind in CODE_EDITS:
                pick = next((c for c in candidates[kind] if c[1] not in out and all(uses[n] < cap for n in c[0])),
                            None)
                if pick and len(out) < count:
                    out.append(pick[1])
                    for n in pick[0]:
                        uses[n] += 1
                    progress = True
    assert len(out) == count, (len(out), count)
    return out


def build_grounded(seen: set[str]) -> dict[str, list[dict]]:
    """Training, selector and benchmark prompts of the four grounded tasks, on disjoint topics (asserted)."""
    rng = random.Random(GROUNDED_SEED)
    for name, old, new, src in SNIPPETS:
        check_snippet(name, old, new, src)
    assert len({s[0] for s in SNIPPETS}) == len(SNIPPETS)
    for values in ENTITY_LISTS.values():
        assert len(set(values)) == len(values)
    entities = {kind: split_three(rng, values, len(values) // 4, len(values) // 4)
                for kind, values in ENTITY_LISTS.items()}
    narratives = split_three(rng, sorted(NARRATIVES), 5, 5)
    records = split_three(rng, sorted(RECORDS), 4, 4)
    snippets = split_three(rng, [s[0] for s in SNIPPETS], 16, 14)
    sets: dict[str, dict[str, list[str]]] = {}
    topics: dict[str, set[tuple[str, str]]] = {}
    for k, name in enumerate(("train", "policy", "bench")):
        set_rng = random.Random(GROUNDED_SEED + 1 + k)
        pool = Pool(set_rng, {kind: split[name] for kind, split in entities.items()})
        count = GROUNDED_SIZES[name]
        sets[name] = {
            "summarize": narrative_prompts(pool, narratives[name], "summarize", count),
            "extract": extract_prompts(pool, records[name], count),
            "qa": narrative_prompts(pool, narratives[name], "qa", count),
            "code_edit": code_edit_prompts(set_rng, snippets[name], count),
        }
        topics[name] = (pool.used | {("narrative", d) for d in narratives[name]}
                        | {("record", r) for r in records[name]} | {("code", s) for s in snippets[name]})
    # no topic, no prompt shared between the sets, nor with any other file; no other set's entity named in a prompt
    names = list(sets)
    for i, a in enumerate(names):
        text = "\n".join(p for prompts in sets[a].values() for p in prompts)
        for b in names[i + 1:]:
            assert not topics[a] & topics[b], (a, b, topics[a] & topics[b])
            assert not {p for ps in sets[a].values() for p in ps} & {p for ps in sets[b].values() for p in ps}
        foreign = {value for b in names if b != a for kind, value in topics[b] if kind in ENTITY_LISTS}
        hits = [value for value in foreign if re.search(rf"(?<!\w){re.escape(value)}(?!\w)", text)]
        hits += [value for b in names if b != a for kind, value in topics[b]
                 if kind == "code" and (f"def {value}(" in text or f"class {value}:" in text)]
        assert not hits, (a, hits)
    for name, prompts in sets.items():
        flat = [p for ps in prompts.values() for p in ps]
        assert len(set(flat)) == len(flat) and not set(flat) & seen
        assert all(len(ps) == GROUNDED_SIZES[name] >= 25 for ps in prompts.values())
    rows: dict[str, list[dict]] = {}
    train = [{"id": f"train-{task}-{i:03d}", "prompt": p, "task": task}
             for task, prompts in sets["train"].items() for i, p in enumerate(prompts)]
    rng.shuffle(train)
    rows["train"] = train
    policy = [{"prompt": p, "task": task} for task, prompts in sets["policy"].items() for p in prompts]
    rng.shuffle(policy)
    rows["policy"] = [{"id": f"policy-{r['task']}-{i:03d}"} | r for i, r in enumerate(policy)]
    rows["bench"] = []
    for task, prompts in sets["bench"].items():
        prompts = prompts[:]
        rng.shuffle(prompts)
        rows["bench"] += [{"id": f"{task}-{i:03d}", "prompt": p, "task": task} for i, p in enumerate(prompts)]
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def main() -> None:
    rng = random.Random(SEED)
    train, bench = build(rng)
    train_rows = [{"id": f"train-{task}-{i:03d}", "prompt": p, "task": task}
                  for task, prompts in train.items() for i, p in enumerate(prompts)]
    rng.shuffle(train_rows)
    write_jsonl(HERE / "train_prompts.jsonl", train_rows)
    mix: list[dict] = []
    for task in ("code", "continuation", "math", "dialogue"):
        rows = [{"id": f"{task}-{i:03d}", "prompt": p, "task": task} for i, p in enumerate(bench[task])]
        write_jsonl(HERE / f"bench_{task}.jsonl", rows)
        mix += rows
    write_jsonl(HERE / "bench_mix.jsonl", mix)
    extra = build_extra(train, bench)
    write_jsonl(HERE / "train_extra.jsonl", extra)
    resample = build_resample(train_rows + extra)
    write_jsonl(HERE / "train_resample.jsonl", resample)
    policy = build_policy({r["prompt"] for r in train_rows + extra + mix})
    write_jsonl(HERE / "policy_prompts.jsonl", policy)
    print(f"train: {len(train_rows)} prompts " + str({t: len(p) for t, p in train.items()})
          + f"; extra: {len(extra)}; resample: {len(resample)}; bench: {len(mix)}; policy: {len(policy)}")

    grounded = build_grounded({r["prompt"] for r in train_rows + extra + resample + mix + policy})
    write_jsonl(HERE / "train_grounded.jsonl", grounded["train"])
    write_jsonl(HERE / "policy_grounded.jsonl", grounded["policy"])
    bench_grounded: list[dict] = []
    for task in GROUNDED_TASKS:
        rows = [r for r in grounded["bench"] if r["task"] == task]
        write_jsonl(HERE / f"bench_{task}.jsonl", rows)
        bench_grounded += rows
    write_jsonl(HERE / "bench_grounded.jsonl", bench_grounded)
    job = mix + bench_grounded  # the batch job's input: the benchmark's short questions, then the grounded tasks
    assert len({r["id"] for r in job}) == len(job)
    write_jsonl(HERE / "job_prompts.jsonl", job)
    print(f"grounded ({', '.join(GROUNDED_TASKS)}): train {len(grounded['train'])}, "
          f"policy {len(grounded['policy'])}, bench {len(bench_grounded)}; job: {len(job)}")


if __name__ == "__main__":
    main()
