"""Write the sample requests `modelfn optimize` checks an optimised model on: one JSON payload
per line, as a client would send it. Run: python events/samples/make.py

breast-cancer and digits take rows and pictures from scikit-learn's bundled data sets (not
only their training split: the guard should see what clients send); sentence-embed takes
everyday sentences written here and sentences of Python's own reference documentation, short
and long."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
COUNT = 200

EVERYDAY = [
    "How do I reset my password?",
    "The delivery arrived two days late and the box was damaged.",
    "Can I change the date of my flight without paying a fee?",
    "This blender is loud but it crushes ice in seconds.",
    "What time does the pharmacy on Main Street close on Sundays?",
    "Our quarterly revenue grew by twelve percent compared with last year.",
    "The weather will be sunny in the morning with showers later in the afternoon.",
    "I would like to cancel my subscription.",
    "The battery lasts a whole day even with the screen at full brightness.",
    "Please send the invoice to the accounts department.",
    "A cat is sleeping on the windowsill in the sun.",
    "The museum is free on the first Sunday of every month.",
    "Add two cups of flour and stir until the dough is smooth.",
    "Where can I find the user manual for this printer?",
    "The meeting has been moved to Thursday at three o'clock.",
    "Interest rates are expected to fall next quarter.",
    "He scored the winning goal in the last minute of the match.",
    "My order number is 48213 and it still shows as processing.",
    "The hotel room was clean, quiet and close to the station.",
    "Vaccines train the immune system to recognise a pathogen.",
    "The train to Edinburgh departs from platform four.",
    "Is this jacket available in a larger size?",
    "Photosynthesis converts light energy into chemical energy.",
    "The app crashes every time I try to upload a photo.",
    "She has been learning to play the violin since she was six.",
    "Refunds are processed within five working days.",
    "The new library opens next week with a reading room for children.",
    "Which plan includes international calls?",
    "The river flooded the valley after a week of heavy rain.",
    "I love this restaurant, the pasta is always perfect.",
    "Terrible customer service, nobody answered my emails.",
    "The spacecraft entered orbit around Mars after a seven-month journey.",
    "Keep the medicine in a cool, dry place away from children.",
    "Our team is hiring a backend engineer with experience in Python.",
    "The concert was cancelled because the singer lost her voice.",
    "How many calories are in a banana?",
    "The stock market closed higher today, led by technology shares.",
    "Turn left at the roundabout and the car park is on your right.",
    "The laptop overheats when I play games for more than an hour.",
    "Bees are essential for pollinating many of the crops we eat.",
    "Can you recommend a good book about the history of Rome?",
    "The contract can be terminated with thirty days' written notice.",
    "Fresh bread is baked every morning at six.",
    "My package was delivered to the wrong address.",
    "The earthquake measured 6.1 on the Richter scale.",
    "What is the difference between a virus and a bacterium?",
    "The children built a sandcastle on the beach.",
    "Please confirm your attendance by Friday.",
    "The software update fixes several security vulnerabilities.",
    "A good night's sleep improves memory and concentration.",
]


def breast_cancer() -> list[dict[str, object]]:
    from sklearn.datasets import load_breast_cancer

    X = load_breast_cancer().data.astype(np.float32)
    rows = np.random.default_rng(0).choice(len(X), COUNT, replace=False)
    return [{"X": [float(f"{v:.7g}") for v in X[i]]} for i in rows]


def digits() -> list[dict[str, object]]:
    from PIL import Image
    from sklearn.datasets import load_digits

    images = load_digits().images
    picked = np.random.default_rng(0).choice(len(images), COUNT, replace=False)
    payloads = []
    for i in picked:
        # dark ink on a light background, as the function expects a scanned digit
        pixels = np.round(255 - images[i] * (255 / 16)).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
        payloads.append({"image": base64.b64encode(buffer.getvalue()).decode()})
    return payloads


def sentences() -> list[dict[str, object]]:
    from pydoc_data.topics import topics

    found: list[str] = []
    for key in sorted(topics):
        for sentence in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", topics[key])):
            words = sentence.split()
            if 6 <= len(words) <= 60 and sentence[0].isupper() and sentence[-1] == "." and ">>>" not in sentence:
                found.append(sentence)
    rng = np.random.default_rng(0)
    reference = [found[i] for i in sorted(rng.choice(len(found), COUNT - len(EVERYDAY) - 10, replace=False))]
    # a few long texts, up to the tokenizer's 256-token truncation
    long = [" ".join(found[i : i + 12]) for i in rng.choice(len(found) - 12, 10, replace=False)]
    return [{"text": t} for t in [*EVERYDAY, *reference, *long]]


def main() -> None:
    for name, make in (("breast-cancer", breast_cancer), ("digits", digits), ("sentence-embed", sentences)):
        path = HERE / f"{name}.jsonl"
        lines = [json.dumps(p, separators=(",", ":")) for p in make()]
        path.write_text("\n".join(lines) + "\n")
        print(f"wrote {path} ({len(lines)} requests)")


if __name__ == "__main__":
    main()
