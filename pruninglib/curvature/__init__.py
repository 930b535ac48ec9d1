"""The Hessian and its stand-ins: curvature matrices that OBD, OBS and their successors read.

- :mod:`~pruninglib.curvature.params`: a model as a function of one flat parameter vector (shared by all);
- :mod:`~pruninglib.curvature.hessian`: the exact Hessian (``torch.func``) and the Gauss-Newton matrix;
- :mod:`~pruninglib.curvature.fisher`: the empirical Fisher from per-sample gradients;
- :mod:`~pruninglib.curvature.kfac`: Kronecker-factored approximate curvature (K-FAC).

None of them registers a criterion: the criteria in :mod:`pruninglib.criteria` use them.
"""
