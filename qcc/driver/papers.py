"""The papers qcc implements, cited the way a user can look them up (author, title, year).

The repository's seeds/ folder is not shipped: every --help text and printed output names the
paper itself. SHORT is for tight places (help lines, table titles); FULL for docs and notes.
"""

from __future__ import annotations

FULL = {
    "banner2018": "Banner, Hubara, Hoffer & Soudry, \"Scalable Methods for 8-bit Training of "
                  "Neural Networks\", NeurIPS 2018",
    "sakr2019": "Sakr & Shanbhag, \"Per-Tensor Fixed-Point Quantization of the "
                "Back-Propagation Algorithm\", ICLR 2019",
    "li2017": "Li, De, Xu, Studer, Samet & Goldstein, \"Training Quantized Nets: A Deeper "
              "Understanding\", NeurIPS 2017",
    "li2020": "Li, Dong & Wang, \"Additive Powers-of-Two Quantization: An Efficient Non-Uniform "
              "Discretization for Neural Networks\", ICLR 2020",
}
SHORT = {
    "banner2018": "Banner et al. 2018",
    "sakr2019": "Sakr & Shanbhag 2019",
    "li2017": "Li et al. 2017",
    "li2020": "Li, Dong & Wang 2020",
}


def cite(key: str, where: str = "") -> str:
    """`Sakr & Shanbhag 2019, §2.2`: the short citation, with a section or equation."""
    return f"{SHORT[key]}, {where}" if where else SHORT[key]
