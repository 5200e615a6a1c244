"""A stand-in for a user's data: a URL list and two zero-shot benchmarks in the formats users have.

- renders images into a folder that a local HTTP server serves, and writes the url/caption/year
  parquet that img2dataset downloads from (downloading, resizing, sharding and the parquet/json
  records are real img2dataset's);
- writes a zero-shot "colour" set in CLIP_benchmark's webdataset layout (with webdataset's own
  TarWriter) and a zero-shot "shape" set as an image-folder tree.

    python scripts/own_data_example.py /tmp/own/www --benchmarks /tmp/own/bench   # see own_data_example.sh
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("www", help="folder to render images into (served over HTTP)")
    p.add_argument("--per-year", type=int, default=300)
    p.add_argument("--years", default="2020,2021,2022,2023")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--benchmarks", default=None, help="also write the two zero-shot sets into this folder")
    args = p.parse_args()
    import pyarrow as pa
    import pyarrow.parquet as pq

    from growclip_ds.data import scenes

    www = Path(args.www)
    (www / "img").mkdir(parents=True, exist_ok=True)
    years = [int(y) for y in args.years.split(",")]
    rows = []
    for t, year in enumerate(years, 1):
        rng = random.Random(f"{args.seed}-{year}")
        for i in range(args.per_year):
            scene = scenes.sample_scene(rng, t, len(years))
            name = f"img/{year}_{i:05d}.jpg"
            scenes.render(scene, rng, size=96).save(www / name, quality=90)
            rows.append({"url": f"http://127.0.0.1:{args.port}/{name}", "caption": scenes.caption(scene, rng),
                         "year": year})
    rows.append({"url": f"http://127.0.0.1:{args.port}/img/missing.jpg", "caption": "a dead link", "year": years[-1]})
    pq.write_table(pa.Table.from_pylist(rows), www / "urls.parquet")
    print(f"{len(rows)} urls ({len(rows) - 1} images + 1 dead link) -> {www / 'urls.parquet'}")
    if args.benchmarks:
        write_benchmarks(Path(args.benchmarks), len(years), args.seed)
    return 0


def write_benchmarks(out: Path, num_steps: int, seed: int, per_class: int = 20) -> None:
    import io

    import webdataset as wds

    from growclip_ds.data import scenes

    colours = scenes.TASKS["colour"]
    (out / "colour" / "test").mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{seed}-bench-colour")
    with wds.TarWriter(str(out / "colour" / "test" / "0.tar")) as sink:
        for label, c in enumerate(colours):
            for j in range(per_class):
                buf = io.BytesIO()
                scenes.render(scenes.sample_scene(rng, num_steps, num_steps, colour=c), rng, size=96).save(buf, "webp")
                sink.write({"__key__": f"{label:02d}_{j:04d}", "webp": buf.getvalue(), "cls": str(label)})
    (out / "colour" / "classnames.txt").write_text("\n".join(colours) + "\n")
    (out / "colour" / "zeroshot_classification_templates.txt").write_text(
        "a photo of {c} shapes.\n{c} shapes on a background.\n")
    rng = random.Random(f"{seed}-bench-shape")
    for shape in scenes.TASKS["shape"]:
        folder = out / "shape" / shape
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            scene = scenes.sample_scene(rng, num_steps, num_steps, shape=shape)
            scenes.render(scene, rng, size=96).save(folder / f"{j:04d}.png")
    print(f"zero-shot sets: {out / 'colour'} (CLIP_benchmark webdataset), {out / 'shape'} (image folder)")


if __name__ == "__main__":
    sys.exit(main())
