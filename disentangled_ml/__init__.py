"""disentangled_ml: disentangled multidimensional metric learning for music similarity.

Lee et al., "Disentangled multidimensional metric learning for music similarity"
(ICASSP 2020), built on conditional similarity networks (Veit et al., CVPR 2017).

Data flows one way (see docs/design.md):
manifest -> prepare -> tf.data pipeline -> model + loss -> evaluation -> export -> embed/search.
"""

__version__ = "0.9.2"
