"""Layer shapes that every adder backend is checked on: strides, padding, dilation, groups, odd sizes."""

# (batch, in_ch, out_ch, (h, w), kernel, stride, padding, dilation, groups, bias)
CASES = [
    (2, 3, 4, (7, 7), 3, 1, 1, 1, 1, False),
    (2, 4, 6, (8, 9), 3, 2, 1, 1, 1, True),
    (1, 5, 3, (6, 6), 1, 1, 0, 1, 1, False),
    (3, 4, 8, (9, 7), 1, 2, 0, 1, 1, True),
    (2, 6, 4, (9, 10), (3, 2), (2, 1), (1, 0), 1, 2, False),
    (2, 4, 4, (10, 10), 3, 1, 2, 2, 1, False),
    (1, 6, 9, (7, 8), (2, 3), 1, (0, 1), (2, 1), 3, True),
    (2, 4, 4, (5, 5), 3, 1, 1, 1, 4, False),
    (2, 3, 5, (4, 4), 5, 1, 2, 1, 1, False),
    (1, 2, 3, (3, 3), 3, 3, 0, 1, 1, True),
]


def case_id(case) -> str:
    n, c, o, hw, k, s, p, d, g, b = case
    return f"n{n}c{c}o{o}hw{hw[0]}x{hw[1]}k{k}s{s}p{p}d{d}g{g}{'b' if b else ''}".replace(" ", "")
