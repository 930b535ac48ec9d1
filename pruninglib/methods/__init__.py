"""Pruning methods: criteria + surgery -> a pruned network, one paper (or one idea) per module.

- :mod:`~pruninglib.methods.schedule`: iterative and greedy schedules (Molchanov et al. 2017, 2019);
- :mod:`~pruninglib.methods.unstructured`: magnitude pruning of single weights (Han et al. 2015);
- :mod:`~pruninglib.methods.l1_filters`: L1-norm filter pruning (Li et al. 2017);
- :mod:`~pruninglib.methods.slimming`: Network Slimming, BN-scale sparsity (Liu et al. 2017);
- :mod:`~pruninglib.methods.selection`: ThiNet and LASSO channel selection (Luo et al. 2017, He et al. 2017);
- :mod:`~pruninglib.methods.reconstruction`: least-squares reconstruction of the next layer;
- :mod:`~pruninglib.methods.latency_search`: latency-aware layer widths;
- :mod:`~pruninglib.methods.block_selection`: Sparse Structure Selection (Huang & Wang 2018);
- :mod:`~pruninglib.methods.obc`: OBC / ExactOBS, row-wise OBS on a layer's reconstruction (Frantar & Alistarh 2022);
- :mod:`~pruninglib.methods.sparsegpt`: SparseGPT (Frantar & Alistarh 2023);
- :mod:`~pruninglib.methods.wanda`: Wanda, |W| times input norm (Sun et al. 2023);
- :mod:`~pruninglib.methods.nm_sparsity`: per-layer, per-row and N:M masks.
"""
