from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    FLOAT32: _ClassVar[DataType]
    FLOAT64: _ClassVar[DataType]
    FLOAT16: _ClassVar[DataType]
    INT64: _ClassVar[DataType]
    BOOL: _ClassVar[DataType]

class ScoreKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCORE_KIND_UNSPECIFIED: _ClassVar[ScoreKind]
    KL: _ClassVar[ScoreKind]
    RECON_NLL: _ClassVar[ScoreKind]
    NEG_ELBO: _ClassVar[ScoreKind]
DATA_TYPE_UNSPECIFIED: DataType
FLOAT32: DataType
FLOAT64: DataType
FLOAT16: DataType
INT64: DataType
BOOL: DataType
SCORE_KIND_UNSPECIFIED: ScoreKind
KL: ScoreKind
RECON_NLL: ScoreKind
NEG_ELBO: ScoreKind

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("model", "rows", "condition", "sample", "seed")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    rows: Tensor
    condition: Tensor
    sample: bool
    seed: int
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., rows: _Optional[_Union[Tensor, _Mapping]] = ..., condition: _Optional[_Union[Tensor, _Mapping]] = ..., sample: _Optional[bool] = ..., seed: _Optional[int] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("model", "mu", "logvar", "z")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MU_FIELD_NUMBER: _ClassVar[int]
    LOGVAR_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    mu: Tensor
    logvar: Tensor
    z: Tensor
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., mu: _Optional[_Union[Tensor, _Mapping]] = ..., logvar: _Optional[_Union[Tensor, _Mapping]] = ..., z: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("model", "z", "condition")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    z: Tensor
    condition: Tensor
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., z: _Optional[_Union[Tensor, _Mapping]] = ..., condition: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class DecodeResponse(_message.Message):
    __slots__ = ("model", "rows")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    rows: Tensor
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., rows: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class SampleRequest(_message.Message):
    __slots__ = ("model", "n", "seed", "condition")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    n: int
    seed: int
    condition: Tensor
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., n: _Optional[int] = ..., seed: _Optional[int] = ..., condition: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class SampleResponse(_message.Message):
    __slots__ = ("model", "rows", "z")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    rows: Tensor
    z: Tensor
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., rows: _Optional[_Union[Tensor, _Mapping]] = ..., z: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ReconstructRequest(_message.Message):
    __slots__ = ("model", "rows", "condition")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    rows: Tensor
    condition: Tensor
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., rows: _Optional[_Union[Tensor, _Mapping]] = ..., condition: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ReconstructResponse(_message.Message):
    __slots__ = ("model", "rows")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    rows: Tensor
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., rows: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("model", "batch_id", "rows", "condition", "row_ids", "start_offset", "include_kl_per_dim", "score", "threshold", "iw_samples", "seed", "explain")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    ROW_IDS_FIELD_NUMBER: _ClassVar[int]
    START_OFFSET_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_KL_PER_DIM_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    IW_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    batch_id: str
    rows: Tensor
    condition: Tensor
    row_ids: Tensor
    start_offset: int
    include_kl_per_dim: bool
    score: ScoreKind
    threshold: float
    iw_samples: int
    seed: int
    explain: int
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., batch_id: _Optional[str] = ..., rows: _Optional[_Union[Tensor, _Mapping]] = ..., condition: _Optional[_Union[Tensor, _Mapping]] = ..., row_ids: _Optional[_Union[Tensor, _Mapping]] = ..., start_offset: _Optional[int] = ..., include_kl_per_dim: _Optional[bool] = ..., score: _Optional[_Union[ScoreKind, str]] = ..., threshold: _Optional[float] = ..., iw_samples: _Optional[int] = ..., seed: _Optional[int] = ..., explain: _Optional[int] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("batch_id", "model", "row_ids", "kl", "kl_per_dim", "recon_nll", "neg_elbo", "p_value", "is_anomaly", "score", "threshold", "iw_nll", "error", "explain_index", "explain_nll", "explain_excess", "explain_value", "explain_reconstruction")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROW_IDS_FIELD_NUMBER: _ClassVar[int]
    KL_FIELD_NUMBER: _ClassVar[int]
    KL_PER_DIM_FIELD_NUMBER: _ClassVar[int]
    RECON_NLL_FIELD_NUMBER: _ClassVar[int]
    NEG_ELBO_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    IS_ANOMALY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    IW_NLL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_INDEX_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_NLL_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_EXCESS_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_VALUE_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_RECONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    model: ModelRef
    row_ids: Tensor
    kl: Tensor
    kl_per_dim: Tensor
    recon_nll: Tensor
    neg_elbo: Tensor
    p_value: Tensor
    is_anomaly: Tensor
    score: ScoreKind
    threshold: float
    iw_nll: Tensor
    error: Error
    explain_index: Tensor
    explain_nll: Tensor
    explain_excess: Tensor
    explain_value: Tensor
    explain_reconstruction: Tensor
    def __init__(self, batch_id: _Optional[str] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., row_ids: _Optional[_Union[Tensor, _Mapping]] = ..., kl: _Optional[_Union[Tensor, _Mapping]] = ..., kl_per_dim: _Optional[_Union[Tensor, _Mapping]] = ..., recon_nll: _Optional[_Union[Tensor, _Mapping]] = ..., neg_elbo: _Optional[_Union[Tensor, _Mapping]] = ..., p_value: _Optional[_Union[Tensor, _Mapping]] = ..., is_anomaly: _Optional[_Union[Tensor, _Mapping]] = ..., score: _Optional[_Union[ScoreKind, str]] = ..., threshold: _Optional[float] = ..., iw_nll: _Optional[_Union[Tensor, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., explain_index: _Optional[_Union[Tensor, _Mapping]] = ..., explain_nll: _Optional[_Union[Tensor, _Mapping]] = ..., explain_excess: _Optional[_Union[Tensor, _Mapping]] = ..., explain_value: _Optional[_Union[Tensor, _Mapping]] = ..., explain_reconstruction: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...

class Schema(_message.Message):
    __slots__ = ("input_dim", "latent_dim", "cond_dim", "feature_names", "condition_classes", "likelihood", "default_score", "thresholds")
    class ThresholdsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    INPUT_DIM_FIELD_NUMBER: _ClassVar[int]
    LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    COND_DIM_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    CONDITION_CLASSES_FIELD_NUMBER: _ClassVar[int]
    LIKELIHOOD_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    input_dim: int
    latent_dim: int
    cond_dim: int
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    condition_classes: _containers.RepeatedScalarFieldContainer[str]
    likelihood: str
    default_score: ScoreKind
    thresholds: _containers.ScalarMap[str, float]
    def __init__(self, input_dim: _Optional[int] = ..., latent_dim: _Optional[int] = ..., cond_dim: _Optional[int] = ..., feature_names: _Optional[_Iterable[str]] = ..., condition_classes: _Optional[_Iterable[str]] = ..., likelihood: _Optional[str] = ..., default_score: _Optional[_Union[ScoreKind, str]] = ..., thresholds: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Monitoring(_message.Message):
    __slots__ = ("explain", "drift", "drift_window_rows", "unavailable")
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    DRIFT_WINDOW_ROWS_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    explain: bool
    drift: bool
    drift_window_rows: int
    unavailable: str
    def __init__(self, explain: _Optional[bool] = ..., drift: _Optional[bool] = ..., drift_window_rows: _Optional[int] = ..., unavailable: _Optional[str] = ...) -> None: ...

class ModelInfoResponse(_message.Message):
    __slots__ = ("model", "versions", "providers", "device", "schema", "manifest_json", "ready", "monitoring")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    MONITORING_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    versions: _containers.RepeatedScalarFieldContainer[int]
    providers: _containers.RepeatedScalarFieldContainer[str]
    device: str
    schema: Schema
    manifest_json: str
    ready: bool
    monitoring: Monitoring
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., versions: _Optional[_Iterable[int]] = ..., providers: _Optional[_Iterable[str]] = ..., device: _Optional[str] = ..., schema: _Optional[_Union[Schema, _Mapping]] = ..., manifest_json: _Optional[str] = ..., ready: _Optional[bool] = ..., monitoring: _Optional[_Union[Monitoring, _Mapping]] = ...) -> None: ...

class ModelDriftRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...

class ModelDriftResponse(_message.Message):
    __slots__ = ("model", "window_rows", "rows", "rows_seen", "kl", "kl_per_dim", "share_per_dim", "p_value", "evaluated_at", "reference_rows", "null_method")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ROWS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ROWS_SEEN_FIELD_NUMBER: _ClassVar[int]
    KL_FIELD_NUMBER: _ClassVar[int]
    KL_PER_DIM_FIELD_NUMBER: _ClassVar[int]
    SHARE_PER_DIM_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    EVALUATED_AT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ROWS_FIELD_NUMBER: _ClassVar[int]
    NULL_METHOD_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    window_rows: int
    rows: int
    rows_seen: int
    kl: float
    kl_per_dim: _containers.RepeatedScalarFieldContainer[float]
    share_per_dim: _containers.RepeatedScalarFieldContainer[float]
    p_value: float
    evaluated_at: float
    reference_rows: int
    null_method: str
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., window_rows: _Optional[int] = ..., rows: _Optional[int] = ..., rows_seen: _Optional[int] = ..., kl: _Optional[float] = ..., kl_per_dim: _Optional[_Iterable[float]] = ..., share_per_dim: _Optional[_Iterable[float]] = ..., p_value: _Optional[float] = ..., evaluated_at: _Optional[float] = ..., reference_rows: _Optional[int] = ..., null_method: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelSummary(_message.Message):
    __slots__ = ("name", "versions", "latest", "ready")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedScalarFieldContainer[int]
    latest: int
    ready: bool
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[int]] = ..., latest: _Optional[int] = ..., ready: _Optional[bool] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelSummary]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelSummary, _Mapping]]] = ...) -> None: ...
