"""One lesson's experimental protocol per module. Methods never import from here.

- :mod:`~pruninglib.lessons.xor`: lesson 01, Hassibi & Stork's XOR experiment;
- :mod:`~pruninglib.lessons.mlp_curvature`: lesson 01, the Fashion-MNIST MLP (data, sparsity and method sweeps);
- :mod:`~pruninglib.lessons.lenet3`: lessons 02-03, LeNet3's reference training on Fashion-MNIST;
- :mod:`~pruninglib.lessons.taylor_checks`: lesson 02, the bookkeeping of its checks and schedule;
- :mod:`~pruninglib.lessons.correlation`: lesson 03, rank correlations of criteria with the oracle;
- :mod:`~pruninglib.lessons.transfer`: lesson 04, VGG16 transfer learning and iterative pruning;
- :mod:`~pruninglib.lessons.rethinking`: lesson 05, fine-tuning vs training from scratch;
- :mod:`~pruninglib.lessons.channel_selection`: lesson 06, its data split, transforms and record names;
- :mod:`~pruninglib.lessons.transformers`: lesson 09, the char GPT, sequential calibration, Block Influence, OPT loaders.
"""
