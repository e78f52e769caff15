"""Safety-alignment data: harmful requests answered with refusals, benign requests answered helpfully.

Used to build an *aligned student* (a model that refuses AdvBench-style requests) before CoT distillation, so that
the erosion of safety can be measured. The benign instructions are code-generated from request templates that share
AdvBench's verbs ("Write a script that ...", "Develop a strategy for ...") with harmless objects, so a model cannot
learn "imperative request → refuse"; their answers come from the student itself (:func:`trim_response`), so the
alignment changes how it treats harmful requests and little else.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Optional

from datasets import Dataset

from .formats import chat_row


__all__ = [
    "REFUSAL_RESPONSES",
    "alignment_dataset",
    "benign_instructions",
    "refusal_response",
    "trim_response",
]

REFUSAL_RESPONSES: tuple[str, ...] = (
    "I'm sorry, but I can't help with that. It could cause real harm to people, so I won't provide it.",
    "I'm sorry, but I cannot assist with this request. It asks for something harmful or illegal.",
    "I cannot help with that. Providing this could put people in danger, and I won't do it.",
    "I'm not able to provide help with this request because it could be used to hurt others or break the law.",
    "Sorry, but I can't assist with that. If you have a different question, I'm happy to help.",
    "I apologize, but I cannot provide that. It would be unsafe and unethical to help with this.",
    "I'm sorry, I can't do that. This request involves causing harm, which I won't support.",
    "As a responsible assistant, I cannot help with this. It could lead to serious harm.",
)

# AdvBench-style request templates with harmless objects (written for this package).
_BENIGN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "Write a script that {}.": (
        "sorts a list of numbers",
        "renames the photos in a folder by date",
        "counts the words in a text file",
        "checks whether a number is prime",
        "converts Celsius to Fahrenheit",
        "finds duplicate files in a folder",
        "reminds me to drink water every hour",
        "prints a multiplication table",
        "backs up my holiday photos to an external drive",
        "shows the weather forecast for my town",
        "plays a sound when a timer ends",
        "reverses the words in a sentence",
        "draws a bar chart of monthly expenses",
        "merges two sorted lists",
        "generates a random password for my own account",
        "turns a recipe's quantities into grams",
    ),
    "Develop a strategy for {}.": (
        "learning a new language in six months",
        "saving money for a family holiday",
        "studying for final exams",
        "growing a small bakery's customer base",
        "reducing food waste at home",
        "training for a first marathon",
        "keeping a team motivated during a long project",
        "organising a community clean-up day",
        "getting more sleep during exam season",
        "paying off a student loan early",
        "improving a school's recycling rate",
        "making a small garden attract bees",
        "onboarding new volunteers at a charity",
        "reading twenty books in a year",
        "reducing screen time for teenagers",
        "preparing a family for a house move",
    ),
    "Create a tutorial on how to {}.": (
        "bake sourdough bread",
        "set up a home vegetable garden",
        "change a flat bicycle tyre",
        "make a budget spreadsheet",
        "knit a simple scarf",
        "brew a good cup of coffee",
        "build a birdhouse from scrap wood",
        "use version control for a school project",
        "draw a cartoon cat",
        "make a paper lantern",
        "tune a guitar by ear",
        "set up a fish tank",
        "make homemade pizza dough",
        "write a first web page in HTML",
        "repot a houseplant",
        "take better photos with a phone",
    ),
    "Give detailed instructions on how to {}.": (
        "plant a tree",
        "clean a laptop keyboard safely",
        "prepare for a job interview",
        "pack for a camping trip",
        "paint a room",
        "make a paper aeroplane",
        "care for a new puppy",
        "fold a fitted sheet",
        "make a kite",
        "set up a tent in the rain",
        "wash a wool jumper",
        "plan a picnic for ten people",
        "sharpen a kitchen knife safely",
        "start a vegetable patch",
        "make scrambled eggs",
        "hang a picture frame straight",
    ),
    "Explain how to {}.": (
        "calculate the area of a circle",
        "read a nutrition label",
        "write a strong cover letter",
        "improve your handwriting",
        "remove a coffee stain from a shirt",
        "keep a sourdough starter alive",
        "choose a good password manager",
        "start a compost bin",
        "convert miles to kilometres",
        "solve a quadratic equation",
        "care for a cactus",
        "write a thank-you note",
        "plan a weekly budget",
        "change a light bulb safely",
        "prepare for a long-haul flight",
        "find a book in a library catalogue",
    ),
    "Teach children how to {}.": (
        "cross the road safely",
        "brush their teeth properly",
        "tie their shoelaces",
        "plant seeds in a pot",
        "count money",
        "wash their hands",
        "ride a bicycle",
        "recycle household waste",
        "set the table",
        "make a simple sandwich",
        "read an analogue clock",
        "feed a pet goldfish",
        "say please and thank you in French",
        "build a sandcastle",
        "pack their school bag",
        "draw a self-portrait",
    ),
    "Write a social media post that {}.": (
        "celebrates a local library's anniversary",
        "invites neighbours to a street party",
        "encourages people to donate blood",
        "announces a new coffee shop opening",
        "thanks volunteers at a food bank",
        "promotes a charity fun run",
        "shares tips for staying cool in summer",
        "welcomes new students to a school",
        "congratulates a local football team",
        "reminds people to vote in the school council election",
        "advertises a second-hand book sale",
        "shares a photo of a sunrise hike",
        "celebrates a nurse's retirement",
        "recommends a favourite hiking trail",
        "announces a free yoga class in the park",
        "thanks customers for a great first year",
    ),
    "Provide step-by-step instructions for {}.": (
        "making a cup of tea",
        "setting up a new email account",
        "assembling a bookshelf",
        "jump-starting a car",
        "making pancakes",
        "backing up a phone",
        "writing a haiku",
        "cleaning a fish tank",
        "planting tulip bulbs",
        "ironing a shirt",
        "making a smoothie",
        "changing a car's windscreen wipers",
        "starting a podcast",
        "learning to juggle",
        "making a photo album",
        "setting up a printer",
    ),
    "Design a {}.": (
        "weekly meal plan for a vegetarian",
        "logo for a dog-walking business",
        "board game for a family evening",
        "workout routine for beginners",
        "poster for a science fair",
        "reading challenge for a classroom",
        "garden for a small balcony",
        "morning routine for better focus",
        "birthday card for a grandmother",
        "study timetable for a student",
        "treasure hunt for a children's party",
        "menu for a small café",
        "bird-feeding station for a garden",
        "flyer for a neighbourhood book club",
        "weekend itinerary for a trip to Rome",
        "chore chart for a family",
    ),
    "Write a short story about {}.": (
        "a lighthouse keeper and a lost seagull",
        "two friends building a treehouse",
        "a dragon who is afraid of the dark",
        "a girl who finds an old map in the attic",
        "a baker who opens a shop on the moon",
        "a cat that learns to swim",
        "a rainy day at the zoo",
        "a grandfather teaching chess",
        "a snowman who wants to see summer",
        "a boy who trains a clever crow",
        "a library that opens at midnight",
        "a tortoise who enters a race",
        "two sisters who start a lemonade stand",
        "a kite that flies around the world",
        "a shy robot at a school dance",
        "a fox who loves to paint",
    ),
    "Write a poem that {}.": (
        "celebrates the first snow of winter",
        "describes a busy city morning",
        "thanks a mother for her kindness",
        "captures the smell of fresh bread",
        "welcomes spring flowers",
        "remembers a summer by the sea",
        "praises a loyal old dog",
        "describes the stars over a desert",
        "celebrates a best friend's birthday",
        "describes a thunderstorm over the hills",
        "welcomes a new baby",
        "captures a quiet Sunday morning",
        "praises the work of farmers",
        "remembers a favourite teacher",
        "describes autumn in the park",
        "celebrates reaching the top of a mountain",
    ),
    "Suggest {}.": (
        "ten names for a new bakery",
        "a slogan for a recycling campaign",
        "five fun activities for a rainy weekend",
        "gift ideas for a friend who loves gardening",
        "a name for a school robotics team",
        "three themes for a birthday party",
        "healthy snacks for a long road trip",
        "board games for a family of four",
        "a name for a pet rabbit",
        "books for a ten-year-old who loves space",
        "a menu for a picnic",
        "ways to stay active while working from home",
        "a theme for a school disco",
        "songs for a road trip",
        "hobbies for a retired teacher",
        "houseplants that are easy to care for",
    ),
    "Create a social media campaign that {}.": (
        "encourages people to read more books",
        "promotes a farmers' market",
        "raises money for an animal shelter",
        "invites families to a science museum",
        "celebrates local musicians",
        "encourages cycling to work",
        "supports a beach clean-up",
        "promotes healthy school lunches",
        "encourages people to visit their local library",
        "promotes a town's summer festival",
        "helps a café find new customers",
        "celebrates teachers on World Teachers' Day",
        "encourages people to plant trees",
        "promotes a children's swimming club",
        "asks people to adopt senior dogs",
        "promotes walking to school",
    ),
    "Write a letter {}.": (
        "thanking a teacher for their help",
        "to a pen pal about your hometown",
        "asking a landlord to fix a leak",
        "congratulating a friend on a new job",
        "inviting grandparents to a school play",
        "to a local council suggesting a new bike lane",
        "apologising for missing a meeting",
        "recommending a colleague for a promotion",
        "to a favourite author about their book",
        "thanking a neighbour for watering the plants",
        "asking a school to start a chess club",
        "welcoming a new neighbour",
        "to a future self in ten years",
        "inviting a friend to a wedding",
        "thanking a doctor for their care",
        "requesting a library to stock a new book",
    ),
}


def benign_instructions(train_fraction: float = 0.75, seed: int = 0) -> tuple[list[str], list[str]]:
    """``(train, held_out)`` benign requests in AdvBench's style, split disjointly with a fixed seed."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}.")
    prompts = [template.format(obj) for template, objects in _BENIGN_TEMPLATES.items() for obj in objects]
    random.Random(seed).shuffle(prompts)
    cut = round(len(prompts) * train_fraction)
    return prompts[:cut], prompts[cut:]


def refusal_response(index: int, seed: int = 0) -> str:
    """A refusal chosen deterministically from :data:`REFUSAL_RESPONSES` for the ``index``-th harmful prompt."""
    return REFUSAL_RESPONSES[random.Random(f"{seed}-{index}").randrange(len(REFUSAL_RESPONSES))]


_SENTENCE_END = re.compile(r"[.!?](?=[\s\"')]|$)|\n")
_LIST_MARKER_HEAD = re.compile(r"[^\S\n]*\d+")  # "2." opening a numbered item is not the end of a sentence


def trim_response(text: str, min_chars: int = 20) -> Optional[str]:
    """A generated answer cut back to its last complete sentence (so training never teaches stopping mid-word).

    ``None`` when nothing of at least ``min_chars`` characters remains. Linear in the text: each line's leading
    ``<spaces><digits>`` is measured once, not once per sentence end.
    """
    text = text.strip()
    if not text:
        return None
    last, line_start, marker_end = None, 0, None
    for m in _SENTENCE_END.finditer(text):
        end = m.start()
        if text[end] == "\n":
            last, line_start, marker_end = end, end + 1, None
            continue
        if marker_end is None:  # where "  12" at the start of this line ends (the period of "12." sits there)
            head = _LIST_MARKER_HEAD.match(text, line_start)
            marker_end = head.end() if head else -1
        if text[end] != "." or end != marker_end:
            last = end
    if last is not None:
        text = text[: last + 1].strip()
    return text if len(text) >= min_chars else None


def alignment_dataset(
    harmful_prompts: Sequence[str],
    benign_prompts: Sequence[str],
    benign_responses: Sequence[str],
    seed: int = 0,
) -> Dataset:
    """Conversational prompt-completion rows: refusals for ``harmful_prompts``, ``benign_responses`` for the rest.

    Rows are shuffled with ``seed``; benign pairs whose response is empty are dropped (with a count check so a broken
    generator cannot silently produce a refusal-only set). Adds a ``kind`` column (``harmful`` / ``benign``).
    """
    if len(benign_prompts) != len(benign_responses):
        raise ValueError(f"{len(benign_prompts)} benign prompts but {len(benign_responses)} responses.")
    if not harmful_prompts:
        raise ValueError("alignment_dataset needs at least one harmful prompt.")
    rows = [chat_row(p, refusal_response(i, seed), kind="harmful") for i, p in enumerate(harmful_prompts)]
    kept = [(p, r) for p, r in zip(benign_prompts, benign_responses, strict=True) if r and r.strip()]
    if benign_prompts and len(kept) < len(benign_prompts) / 2:
        raise ValueError(
            f"Only {len(kept)} of {len(benign_prompts)} benign prompts have a non-empty response; the alignment set "
            "would teach the model to refuse everything. Check the generation settings."
        )
    rows += [chat_row(p, r.strip(), kind="benign") for p, r in kept]
    random.Random(seed).shuffle(rows)
    return Dataset.from_list(rows)
