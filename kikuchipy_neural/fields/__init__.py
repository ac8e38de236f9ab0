"""Neural fields: torch modules mapping scan coordinates to patterns."""

from kikuchipy_neural.fields.base import NeuralField, build_field
from kikuchipy_neural.fields.factorized import FactorizedField
from kikuchipy_neural.fields.siren import SineLayer, Siren

# formulation name -> field class; the model file stores the name.
FIELDS: dict[str, type[NeuralField]] = {
    FactorizedField.formulation: FactorizedField,
}

__all__ = [
    "FIELDS",
    "FactorizedField",
    "NeuralField",
    "Siren",
    "SineLayer",
    "build_field",
]
