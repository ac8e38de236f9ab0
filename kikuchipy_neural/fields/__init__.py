"""Neural fields: torch modules mapping scan coordinates to patterns."""

from kikuchipy_neural.fields.base import NeuralField, build_field
from kikuchipy_neural.fields.encodings import FourierFeatures
from kikuchipy_neural.fields.factorized import FactorizedField
from kikuchipy_neural.fields.joint import JointField
from kikuchipy_neural.fields.siren import SineLayer, Siren

# formulation name -> field class; the model file stores the name.
FIELDS: dict[str, type[NeuralField]] = {
    FactorizedField.formulation: FactorizedField,
    JointField.formulation: JointField,
}

__all__ = [
    "FIELDS",
    "FactorizedField",
    "FourierFeatures",
    "JointField",
    "NeuralField",
    "Siren",
    "SineLayer",
    "build_field",
]
