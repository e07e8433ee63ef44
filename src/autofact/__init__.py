"""autofact: matrix factorization with missing data; state the loss, autograd does the rest.

>>> import autofact
>>> train = autofact.read("u1.base")
>>> model = autofact.MatrixFactorization(rank=10, loss="huber").fit(train)
>>> model.predict([196], [242])
"""

from . import evaluation as evaluation
from . import losses as losses
from . import regularizers as regularizers
from ._version import __version__ as __version__
from .data import Ratings as Ratings
from .errors import FitError as FitError
from .errors import UnknownIdError as UnknownIdError
from .functional import matrix_factorization_bgd as matrix_factorization_bgd
from .model import MatrixFactorization as MatrixFactorization
from .model import load as load
from .reading import read as read
from .recommend import FoldedUser as FoldedUser
from .recommend import Recommendations as Recommendations
from .tuning import tune as tune

__all__ = [
    "FitError",
    "FoldedUser",
    "MatrixFactorization",
    "Ratings",
    "Recommendations",
    "UnknownIdError",
    "__version__",
    "evaluation",
    "load",
    "losses",
    "matrix_factorization_bgd",
    "read",
    "regularizers",
    "tune",
]
