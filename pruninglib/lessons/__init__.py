"""One lesson's experimental protocol per module. Methods never import from here.

- :mod:`~pruninglib.lessons.xor`: lesson 01, Hassibi & Stork's XOR experiment;
- :mod:`~pruninglib.lessons.lenet3`: lessons 02-03, LeNet3's reference training on Fashion-MNIST;
- :mod:`~pruninglib.lessons.correlation`: lesson 03, rank correlations of criteria with the oracle;
- :mod:`~pruninglib.lessons.transfer`: lesson 04, VGG16 transfer learning and iterative pruning;
- :mod:`~pruninglib.lessons.rethinking`: lesson 05, fine-tuning vs training from scratch.
"""
