"""Write the demo's example images from the built-in benchmark: `python demo/make_examples.py`.

One test image per (class, background kind) group of the two-class correlated benchmark, at 112 px (the main job's
56-px images at twice the size, so the stripes keep their period relative to the patches after the processor's resize).
"""

from pathlib import Path

from ifam_data.synthetic import make_synthetic_benchmark


EXAMPLES_DIR = Path(__file__).resolve().with_name("examples")


def make_examples(folder: str | Path = EXAMPLES_DIR, seed: int = 0) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    test = make_synthetic_benchmark(num_train=2, num_validation=2, num_test=16, image_size=112, patch_size=14,
                                    seed=seed)["test"]
    names = test.features["label"].names
    written, seen = [], set()
    for example in test:
        group = (example["label"], example["background"])
        if group in seen:
            continue
        seen.add(group)
        path = folder / f"{names[example['label']]}_on_background_{example['background']}.png"
        example["image"].save(path)
        written.append(path)
    return sorted(written)


if __name__ == "__main__":
    print(*make_examples(), sep="\n")
