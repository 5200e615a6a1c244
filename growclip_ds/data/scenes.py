"""Procedural image-text scenes: the built-in corpus that grows and shifts over T steps.

A scene is 1-3 objects of one shape and colour, small or large, grouped at one position, on a
plain, striped or checkered background. Captions are templated with synonyms. Step t draws from
the concepts introduced up to t, over-weighting the ones new at t, so later data holds colours,
shapes and counts the earlier data lacks. This is corpus v1: it adds concepts but no difficulty,
so it never outgrows the step-1 model (docs/results/headroom_*); v2 (scenes_v2.py) does.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLOURS = {  # name: (rgb, synonyms)
    "red": ((220, 30, 30), ["red", "crimson", "scarlet"]),
    "green": ((30, 180, 40), ["green", "emerald"]),
    "blue": ((40, 70, 230), ["blue", "azure"]),
    "yellow": ((240, 220, 30), ["yellow", "golden"]),
    "white": ((245, 245, 245), ["white", "snowy"]),
    "purple": ((150, 40, 200), ["purple", "violet"]),
    "orange": ((250, 140, 20), ["orange", "amber"]),
    "cyan": ((30, 220, 220), ["cyan", "turquoise"]),
}
SHAPES = {  # name: (plural, synonyms)
    "circle": ("circles", ["circle", "disc"]),
    "square": ("squares", ["square", "box"]),
    "triangle": ("triangles", ["triangle", "wedge"]),
    "cross": ("crosses", ["cross", "plus sign"]),
    "diamond": ("diamonds", ["diamond", "rhombus"]),
    "ring": ("rings", ["ring", "hoop"]),
}
POSITIONS = {  # name: (region x0, x1, y0, y1 as fractions of the canvas, phrases); a whole group fits
    "left": ((0.0, 0.4, 0.25, 0.75), ["on the left", "at the left side"]),
    "right": ((0.6, 1.0, 0.25, 0.75), ["on the right", "at the right side"]),
    "top": ((0.25, 0.75, 0.0, 0.4), ["at the top", "near the top edge"]),
    "bottom": ((0.25, 0.75, 0.6, 1.0), ["at the bottom", "near the bottom edge"]),
    "center": ((0.25, 0.75, 0.25, 0.75), ["in the center", "in the middle"]),
}
BACKGROUNDS = ["plain", "striped", "checkered"]
COUNT_WORDS = {1: ["one", "a single"], 2: ["two", "a pair of"], 3: ["three", "a trio of"]}
SIZES = {"small": 0.15, "large": 0.22}
TEMPLATES = ["{n} {size} {colour} {shape} {pos} on a {bg} background",
             "a picture of {n} {colour} {shape} {pos}",
             "{n} {colour} {shape}, {size}, {pos}, {bg} backdrop",
             "there are {n} {size} {colour} {shape} {pos}"]

# Zero-shot tasks: attribute -> class names; the held-out sets are uniform over classes.
TASKS = {"colour": list(COLOURS), "shape": list(SHAPES), "position": list(POSITIONS)}
PROMPTS = {
    "colour": ["a picture of {c} objects", "{c} shapes", "some {c} things on a background"],
    "shape": ["one {c}", "a single {c}", "a picture of a {c}", "a {c} on a plain background"],
    "position": ["objects {c}", "a picture of shapes {c}", "things placed {c}"],
}
CLASS_PHRASES = {"position": {k: v[1][0] for k, v in POSITIONS.items()}}


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    position: str
    count: int
    size: str
    background: str


def concepts_at(step: int, num_steps: int) -> dict[str, list[str]]:
    """Concepts available at a step: 5 of 8 colours, 5 of 6 shapes, counts 1-2 at step 1; all at step T."""
    def take(names, first):
        frac = 1.0 if num_steps == 1 else (step - 1) / (num_steps - 1)
        return names[: first + round(frac * (len(names) - first))]
    return {"colour": take(list(COLOURS), 5), "shape": take(list(SHAPES), 5),
            "background": list(BACKGROUNDS), "position": list(POSITIONS),
            "count": [1, 2] if step == 1 and num_steps > 1 else [1, 2, 3], "size": list(SIZES)}


def sample_scene(rng: random.Random, step: int, num_steps: int, **fixed) -> Scene:
    """A scene of this step's distribution; half the scenes favour concepts new at this step."""
    now = concepts_at(step, num_steps)
    before = concepts_at(step - 1, num_steps) if step > 1 else {k: [] for k in now}
    pick = {}
    for k, opts in now.items():
        new = [o for o in opts if o not in before[k]]
        pick[k] = rng.choice(new if new and rng.random() < 0.5 else opts)
    pick.update(fixed)
    return Scene(pick["colour"], pick["shape"], pick["position"], pick["count"], pick["size"],
                 pick["background"])


def caption(scene: Scene, rng: random.Random, colours: dict = COLOURS, shapes: dict = SHAPES) -> str:
    plural = scene.count > 1
    shape_word = rng.choice(shapes[scene.shape][1])
    if plural:
        shape_word = shapes[scene.shape][0] if shape_word == scene.shape else shape_word + (
            "es" if shape_word.endswith(("s", "x")) else "s")
    return rng.choice(TEMPLATES).format(
        n=rng.choice(COUNT_WORDS[scene.count]), size=scene.size, colour=rng.choice(colours[scene.colour][1]),
        shape=shape_word, pos=rng.choice(POSITIONS[scene.position][1]), bg=scene.background)


def draw_shape(d: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "cross":
        t = r / 2.4
        d.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
        d.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)
    elif shape == "diamond":
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif shape == "ring":
        d.ellipse(box, outline=fill, width=max(1, int(r / 2.5)))
    elif shape == "bar":   # corpus v2
        d.rectangle([cx - r, cy - r / 2.5, cx + r, cy + r / 2.5], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def background(kind: str, rng: random.Random, size: int) -> Image.Image:
    """A grey canvas of a random shade, plain, striped or checkered."""
    base = rng.randint(20, 70)
    img = Image.new("RGB", (size, size), (base, base, base))
    d = ImageDraw.Draw(img)
    alt = (base + 35, base + 35, base + 35)
    step = size // 6
    if kind == "striped":
        for x in range(0, size, 2 * step):
            d.rectangle([x, 0, x + step - 1, size], fill=alt)
    elif kind == "checkered":
        for x in range(0, size, step):
            for y in range(0, size, step):
                if (x // step + y // step) % 2:
                    d.rectangle([x, y, x + step - 1, y + step - 1], fill=alt)
    return img


def jitter(rgb, rng: random.Random) -> tuple:
    return tuple(min(255, max(0, c + rng.randint(-15, 15))) for c in rgb)


def render(scene: Scene, rng: random.Random, size: int = 48, colours: dict = COLOURS) -> Image.Image:
    img = background(scene.background, rng, size)
    d = ImageDraw.Draw(img)
    (x0, x1, y0, y1), _ = POSITIONS[scene.position]
    # group layout in units of the object radius; tall groups in the side regions, wide ones elsewhere
    tall = scene.position in ("left", "right")
    units = {1: [(0, 0)], 2: [(0, -1.15), (0, 1.15)] if tall else [(-1.15, 0), (1.15, 0)],
             3: [(-1.15, 1.0), (1.15, 1.0), (0, -1.0)]}[scene.count]
    ext_x = max(abs(u) for u, _ in units) + 1
    ext_y = max(abs(v) for _, v in units) + 1
    w, h = (x1 - x0) * size, (y1 - y0) * size
    r = min(SIZES[scene.size] * size * rng.uniform(0.85, 1.15), 0.5 * w / ext_x, 0.5 * h / ext_y)
    cx = rng.uniform(x0 * size + ext_x * r, x1 * size - ext_x * r)
    cy = rng.uniform(y0 * size + ext_y * r, y1 * size - ext_y * r)
    rgb = jitter(colours[scene.colour][0], rng)
    for u, v in units:
        draw_shape(d, scene.shape, cx + u * r, cy + v * r, r * 0.95, rgb)
    return img


# The corpus interface builtin.py reads (v2, data/scenes_v2.py, has the same)
def draw_train(rng: random.Random, step: int, num_steps: int) -> list:
    return [sample_scene(rng, step, num_steps)]


def meta(scene: Scene) -> dict:
    return dict(scene.__dict__)


def eval_tasks(num_steps: int) -> dict:
    """Zero-shot tasks: name -> (class phrases, prompt templates, sampler(rng, class index) -> scene)."""
    def sampler(task, classes):
        return lambda rng, i: sample_scene(rng, num_steps, num_steps, **{task: classes[i]})
    return {task: ([CLASS_PHRASES.get(task, {}).get(c, c) for c in classes], PROMPTS[task], sampler(task, classes))
            for task, classes in TASKS.items()}
