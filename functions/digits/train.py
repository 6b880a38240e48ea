"""Train the digits example: a classifier on scikit-learn's bundled 8x8 digits, served with
the image codec (a PNG in, the digit and its probabilities out).
Run: python functions/digits/train.py"""

from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

HERE = Path(__file__).parent


def main() -> None:
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    model = LogisticRegression(max_iter=5000, random_state=0).fit(X_train, y_train)
    onx = to_onnx(model, X_train[:1], options={"zipmap": False}, target_opset=17)
    (HERE / "model.onnx").write_bytes(onx.SerializeToString())
    print(f"test accuracy {model.score(X_test, y_test):.3f}; wrote {HERE / 'model.onnx'}")


if __name__ == "__main__":
    main()
