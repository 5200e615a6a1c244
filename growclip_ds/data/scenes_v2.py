"""Built-in corpus v2: a world the step-1 model outgrows (GROWCLIP.md section 4d).

Step 1 holds v1's single-object scenes (data/scenes.py) over fewer concepts. From step 2 on a growing
share of the scenes holds two different objects in a relation, captioned with the attributes bound to
their objects, in either order ("a red circle left of a blue square" = "a blue square right of a red
circle"). Every scene comes with three contrasts one attribute away (a pair's: colours swapped, shapes
swapped, relation flipped, so only the binding tells them apart), so captions in a batch often differ
in one attribute: a batch of 128 random scenes needs only a few bits to tell apart, families need all.
Colours and shapes keep arriving until step T. Evaluation adds two tasks that a bag of attributes
cannot solve: ``binding`` (which colour belongs to which shape: the swapped caption is always a class)
and ``relation`` (which object is where).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from . import scenes
from .scenes import Scene

COLOURS = {**scenes.COLOURS,
           "pink": ((250, 130, 190), ["pink", "rose"]),
           "brown": ((130, 75, 25), ["brown", "chocolate"])}
SHAPES = {**scenes.SHAPES, "bar": ("bars", ["bar", "stripe"])}
# relation: (the first object's region, the second's, phrases, the inverse relation)
RELATIONS = {
    "left": ("left", "right", ["left of", "to the left of"], "right"),
    "right": ("right", "left", ["right of", "to the right of"], "left"),
    "above": ("top", "bottom", ["above", "over"], "below"),
    "below": ("bottom", "top", ["below", "under"], "above"),
}
_HALF = {"left": (0.0, 0.5, 0.15, 0.85), "right": (0.5, 1.0, 0.15, 0.85),
         "top": (0.15, 0.85, 0.0, 0.5), "bottom": (0.15, 0.85, 0.5, 1.0)}
PAIR_RADIUS = 0.16            # object radius in a two-object scene, as a fraction of the canvas
BIND_SHAPES = ("circle", "square")                     # the binding and relation tasks' two shapes
BIND_COLOURS = ("red", "green", "blue", "yellow")


@dataclass(frozen=True)
class PairScene:
    """Two objects, ``a`` in ``relation`` to ``b`` (a left of b, ...)."""

    colour_a: str
    shape_a: str
    colour_b: str
    shape_b: str
    relation: str
    background: str


def concepts_at(step: int, num_steps: int) -> dict[str, list[str]]:
    """Step 1: 5 of 10 colours, 4 of 7 shapes; every colour and shape by step T."""
    frac = 1.0 if num_steps == 1 else (step - 1) / (num_steps - 1)

    def take(names, first):
        return names[: first + round(frac * (len(names) - first))]
    return {"colour": take(list(COLOURS), 5), "shape": take(list(SHAPES), 4), "relation": list(RELATIONS),
            "background": list(scenes.BACKGROUNDS), "position": list(scenes.POSITIONS),
            "count": [1, 2] if step == 1 and num_steps > 1 else [1, 2, 3], "size": list(scenes.SIZES)}


def pair_share(step: int) -> float:
    """The share of two-object scenes at step t: 0, 1/2, 3/4, 7/8, ..."""
    return 1.0 - 0.5 ** (step - 1)


def _single(rng: random.Random, now: dict, **fixed) -> Scene:
    pick = {k: rng.choice(now[k]) for k in ("colour", "shape", "position", "count", "size", "background")}
    pick.update(fixed)
    return Scene(pick["colour"], pick["shape"], pick["position"], pick["count"], pick["size"], pick["background"])


def _pair(rng: random.Random, now: dict, **fixed) -> PairScene:
    sa, sb = rng.sample(now["shape"], 2)
    ca, cb = rng.sample(now["colour"], 2)
    pick = {"colour_a": ca, "shape_a": sa, "colour_b": cb, "shape_b": sb,
            "relation": rng.choice(now["relation"]), "background": rng.choice(now["background"])}
    pick.update(fixed)
    return PairScene(**pick)


def contrasts(scene, rng: random.Random, now: dict) -> list:
    """Three scenes, each one attribute away from ``scene``. A pair: its colours swapped, its shapes swapped,
    its relation flipped (the binding changes, the bag of attributes does not). A single scene: another
    colour, another shape, another position."""
    p = scene
    if isinstance(p, PairScene):
        return [PairScene(p.colour_b, p.shape_a, p.colour_a, p.shape_b, p.relation, p.background),
                PairScene(p.colour_a, p.shape_b, p.colour_b, p.shape_a, p.relation, p.background),
                PairScene(p.colour_a, p.shape_a, p.colour_b, p.shape_b, RELATIONS[p.relation][3], p.background)]
    other = {k: rng.choice([v for v in now[k] if v != getattr(p, k)]) for k in ("colour", "shape", "position")}
    return [Scene(**{**p.__dict__, k: v}) for k, v in other.items()]


def draw_train(rng: random.Random, step: int, num_steps: int) -> list:
    """One training draw of step t, a family: a scene (two objects with probability ``pair_share``, else one)
    and its three contrasts, in a random order, written next to each other. A shuffle buffer of a few
    dozen keeps most of a family in one batch, where one attribute or one binding tells the captions apart:
    the contrastive loss then needs what the scenes hold, not just enough to tell random captions apart."""
    now = concepts_at(step, num_steps)
    scene = _pair(rng, now) if rng.random() < pair_share(step) else _single(rng, now)
    family = [scene, *contrasts(scene, rng, now)]
    rng.shuffle(family)
    return family


def caption(scene, rng: random.Random) -> str:
    if isinstance(scene, Scene):
        return scenes.caption(scene, rng, COLOURS, SHAPES)
    a = f"{rng.choice(COLOURS[scene.colour_a][1])} {rng.choice(SHAPES[scene.shape_a][1])}"
    b = f"{rng.choice(COLOURS[scene.colour_b][1])} {rng.choice(SHAPES[scene.shape_b][1])}"
    rel = RELATIONS[scene.relation]
    form = rng.randrange(5)
    if form == 0:     # the same scene told from the other object
        text = f"a {b} {rng.choice(RELATIONS[rel[3]][2])} a {a}"
    elif form == 1:
        text = f"a {a} and a {b}"
    elif form == 2:
        text = f"a picture of a {a} {rng.choice(rel[2])} a {b}"
    else:
        text = f"a {a} {rng.choice(rel[2])} a {b}"
    return text + (f" on a {scene.background} background" if rng.random() < 0.3 else "")


def render(scene, rng: random.Random, size: int = 48) -> Image.Image:
    if isinstance(scene, Scene):
        return scenes.render(scene, rng, size, COLOURS)
    img = scenes.background(scene.background, rng, size)
    d = ImageDraw.Draw(img)
    first, second, _, _ = RELATIONS[scene.relation]
    for colour, shape, region in ((scene.colour_a, scene.shape_a, first), (scene.colour_b, scene.shape_b, second)):
        x0, x1, y0, y1 = (v * size for v in _HALF[region])
        r = PAIR_RADIUS * size * rng.uniform(0.85, 1.1)
        cx, cy = rng.uniform(x0 + r, x1 - r), rng.uniform(y0 + r, y1 - r)
        scenes.draw_shape(d, shape, cx, cy, r, scenes.jitter(COLOURS[colour][0], rng))
    return img


def meta(scene) -> dict:
    return {"kind": "single" if isinstance(scene, Scene) else "pair", **scene.__dict__}


def eval_tasks(num_steps: int) -> dict:
    """Zero-shot tasks: name -> (class phrases, prompt templates, sampler(rng, class index) -> scene)."""
    now = concepts_at(num_steps, num_steps)
    colours, shapes, positions = list(COLOURS), list(SHAPES), list(scenes.POSITIONS)
    binds = [(ca, cb) for ca in BIND_COLOURS for cb in BIND_COLOURS if ca != cb]
    rels = list(RELATIONS)
    sa, sb = BIND_SHAPES

    def bind_scene(rng, i):   # colour_a on the circle, colour_b on the square, in any relation and order
        ca, cb = binds[i]
        p = _pair(rng, now, colour_a=ca, shape_a=sa, colour_b=cb, shape_b=sb)
        return p if rng.random() < 0.5 else PairScene(cb, sb, ca, sa, RELATIONS[p.relation][3], p.background)

    def rel_scene(rng, i):    # the circle in relation i to the square, any two colours
        return _pair(rng, now, shape_a=sa, shape_b=sb, relation=rels[i])

    return {
        "colour": (colours, scenes.PROMPTS["colour"], lambda rng, i: _single(rng, now, colour=colours[i])),
        "shape": (shapes, scenes.PROMPTS["shape"], lambda rng, i: _single(rng, now, shape=shapes[i], count=1)),
        "position": ([scenes.POSITIONS[p][1][0] for p in positions], scenes.PROMPTS["position"],
                     lambda rng, i: _single(rng, now, position=positions[i])),
        "binding": ([f"{ca} {sa} and a {cb} {sb}" for ca, cb in binds],
                    ["a {c}", "a picture of a {c}", "there is a {c}"], bind_scene),
        "relation": ([f"{sa} {RELATIONS[r][2][1]} a {sb}" for r in rels], ["a {c}", "a picture of a {c}"], rel_scene),
    }
