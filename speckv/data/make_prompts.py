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
"""

from __future__ import annotations

import json
import random
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


if __name__ == "__main__":
    main()
