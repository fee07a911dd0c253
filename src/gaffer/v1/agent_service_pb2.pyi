import datetime

from gaffer.v1 import job_pb2 as _job_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_STATE_UNSPECIFIED: _ClassVar[AgentState]
    AGENT_STATE_ACTIVE: _ClassVar[AgentState]
    AGENT_STATE_DRAINING: _ClassVar[AgentState]
    AGENT_STATE_OFFLINE: _ClassVar[AgentState]
AGENT_STATE_UNSPECIFIED: AgentState
AGENT_STATE_ACTIVE: AgentState
AGENT_STATE_DRAINING: AgentState
AGENT_STATE_OFFLINE: AgentState

class Capacity(_message.Message):
    __slots__ = ("slots", "cpu", "memory_bytes", "gpu")
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    slots: int
    cpu: float
    memory_bytes: int
    gpu: int
    def __init__(self, slots: _Optional[int] = ..., cpu: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., gpu: _Optional[int] = ...) -> None: ...

class AttemptRef(_message.Message):
    __slots__ = ("job_id", "attempt")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class Agent(_message.Message):
    __slots__ = ("id", "name", "labels", "capacity", "queues", "state", "running", "last_heartbeat_time", "register_time")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_TIME_FIELD_NUMBER: _ClassVar[int]
    REGISTER_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    labels: _containers.ScalarMap[str, str]
    capacity: Capacity
    queues: _containers.RepeatedScalarFieldContainer[str]
    state: AgentState
    running: _containers.RepeatedCompositeFieldContainer[AttemptRef]
    last_heartbeat_time: _timestamp_pb2.Timestamp
    register_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., capacity: _Optional[_Union[Capacity, _Mapping]] = ..., queues: _Optional[_Iterable[str]] = ..., state: _Optional[_Union[AgentState, str]] = ..., running: _Optional[_Iterable[_Union[AttemptRef, _Mapping]]] = ..., last_heartbeat_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., register_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RegisterAgentRequest(_message.Message):
    __slots__ = ("name", "labels", "capacity", "queues")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    capacity: Capacity
    queues: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., capacity: _Optional[_Union[Capacity, _Mapping]] = ..., queues: _Optional[_Iterable[str]] = ...) -> None: ...

class RegisterAgentResponse(_message.Message):
    __slots__ = ("agent_id", "lease_ttl", "heartbeat_interval", "agent")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    lease_ttl: _duration_pb2.Duration
    heartbeat_interval: _duration_pb2.Duration
    agent: Agent
    def __init__(self, agent_id: _Optional[str] = ..., lease_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., agent: _Optional[_Union[Agent, _Mapping]] = ...) -> None: ...

class ClaimJobRequest(_message.Message):
    __slots__ = ("agent_id", "max_jobs", "wait")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_JOBS_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    max_jobs: int
    wait: _duration_pb2.Duration
    def __init__(self, agent_id: _Optional[str] = ..., max_jobs: _Optional[int] = ..., wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class JobAssignment(_message.Message):
    __slots__ = ("job", "attempt", "lease_token", "lease_expire_time")
    JOB_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    attempt: int
    lease_token: str
    lease_expire_time: _timestamp_pb2.Timestamp
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ..., attempt: _Optional[int] = ..., lease_token: _Optional[str] = ..., lease_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ClaimJobResponse(_message.Message):
    __slots__ = ("assignments",)
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[JobAssignment]
    def __init__(self, assignments: _Optional[_Iterable[_Union[JobAssignment, _Mapping]]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("agent_id", "running", "wait", "canceling")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    CANCELING_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    running: _containers.RepeatedCompositeFieldContainer[AttemptRef]
    wait: _duration_pb2.Duration
    canceling: _containers.RepeatedCompositeFieldContainer[AttemptRef]
    def __init__(self, agent_id: _Optional[str] = ..., running: _Optional[_Iterable[_Union[AttemptRef, _Mapping]]] = ..., wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., canceling: _Optional[_Iterable[_Union[AttemptRef, _Mapping]]] = ...) -> None: ...

class CancelOrder(_message.Message):
    __slots__ = ("job_id", "attempt", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("cancel", "lost", "lease_expire_time", "draining")
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    cancel: _containers.RepeatedCompositeFieldContainer[CancelOrder]
    lost: _containers.RepeatedCompositeFieldContainer[AttemptRef]
    lease_expire_time: _timestamp_pb2.Timestamp
    draining: bool
    def __init__(self, cancel: _Optional[_Iterable[_Union[CancelOrder, _Mapping]]] = ..., lost: _Optional[_Iterable[_Union[AttemptRef, _Mapping]]] = ..., lease_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., draining: bool = ...) -> None: ...

class UpdateJobStatusRequest(_message.Message):
    __slots__ = ("job_id", "attempt", "lease_token", "state", "message", "reject", "validate_time", "start_time")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    lease_token: str
    state: _job_pb2.JobState
    message: str
    reject: bool
    validate_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., lease_token: _Optional[str] = ..., state: _Optional[_Union[_job_pb2.JobState, str]] = ..., message: _Optional[str] = ..., reject: bool = ..., validate_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UpdateJobStatusResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class PushLogsRequest(_message.Message):
    __slots__ = ("job_id", "attempt", "lease_token", "chunk")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    lease_token: str
    chunk: _job_pb2.LogChunk
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., lease_token: _Optional[str] = ..., chunk: _Optional[_Union[_job_pb2.LogChunk, _Mapping]] = ...) -> None: ...

class PushLogsResponse(_message.Message):
    __slots__ = ("accepted", "duplicates", "stdout_size", "stderr_size")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    STDOUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    STDERR_SIZE_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicates: int
    stdout_size: int
    stderr_size: int
    def __init__(self, accepted: _Optional[int] = ..., duplicates: _Optional[int] = ..., stdout_size: _Optional[int] = ..., stderr_size: _Optional[int] = ...) -> None: ...

class ArtifactHeader(_message.Message):
    __slots__ = ("job_id", "attempt", "lease_token", "name", "size_bytes", "digest")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    lease_token: str
    name: str
    size_bytes: int
    digest: str
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., lease_token: _Optional[str] = ..., name: _Optional[str] = ..., size_bytes: _Optional[int] = ..., digest: _Optional[str] = ...) -> None: ...

class UploadArtifactRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ArtifactHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[ArtifactHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadArtifactResponse(_message.Message):
    __slots__ = ("artifact",)
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    artifact: _job_pb2.Artifact
    def __init__(self, artifact: _Optional[_Union[_job_pb2.Artifact, _Mapping]] = ...) -> None: ...

class CompleteJobRequest(_message.Message):
    __slots__ = ("job_id", "attempt", "lease_token", "state", "exit_code", "message", "not_retryable", "result_json", "start_time", "validate_time")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    NOT_RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    lease_token: str
    state: _job_pb2.JobState
    exit_code: int
    message: str
    not_retryable: bool
    result_json: str
    start_time: _timestamp_pb2.Timestamp
    validate_time: _timestamp_pb2.Timestamp
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., lease_token: _Optional[str] = ..., state: _Optional[_Union[_job_pb2.JobState, str]] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ..., not_retryable: bool = ..., result_json: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., validate_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CompleteJobResponse(_message.Message):
    __slots__ = ("accepted", "job")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    job: _job_pb2.Job
    def __init__(self, accepted: bool = ..., job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class CompleteJobsRequest(_message.Message):
    __slots__ = ("outcomes",)
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[CompleteJobRequest]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[CompleteJobRequest, _Mapping]]] = ...) -> None: ...

class CompleteJobsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[CompleteJobResult]
    def __init__(self, results: _Optional[_Iterable[_Union[CompleteJobResult, _Mapping]]] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("id", "claim", "update_status", "complete", "cancel")
    ID_FIELD_NUMBER: _ClassVar[int]
    CLAIM_FIELD_NUMBER: _ClassVar[int]
    UPDATE_STATUS_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    id: int
    claim: ClaimJobRequest
    update_status: UpdateJobStatusRequest
    complete: CompleteJobsRequest
    cancel: int
    def __init__(self, id: _Optional[int] = ..., claim: _Optional[_Union[ClaimJobRequest, _Mapping]] = ..., update_status: _Optional[_Union[UpdateJobStatusRequest, _Mapping]] = ..., complete: _Optional[_Union[CompleteJobsRequest, _Mapping]] = ..., cancel: _Optional[int] = ...) -> None: ...

class SessionResponse(_message.Message):
    __slots__ = ("id", "code", "message", "reason", "claim", "update_status", "complete")
    ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CLAIM_FIELD_NUMBER: _ClassVar[int]
    UPDATE_STATUS_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    id: int
    code: int
    message: str
    reason: str
    claim: ClaimJobResponse
    update_status: UpdateJobStatusResponse
    complete: CompleteJobsResponse
    def __init__(self, id: _Optional[int] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., reason: _Optional[str] = ..., claim: _Optional[_Union[ClaimJobResponse, _Mapping]] = ..., update_status: _Optional[_Union[UpdateJobStatusResponse, _Mapping]] = ..., complete: _Optional[_Union[CompleteJobsResponse, _Mapping]] = ...) -> None: ...

class CompleteJobResult(_message.Message):
    __slots__ = ("code", "message", "reason", "response")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    reason: str
    response: CompleteJobResponse
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., reason: _Optional[str] = ..., response: _Optional[_Union[CompleteJobResponse, _Mapping]] = ...) -> None: ...

class ReleaseJobRequest(_message.Message):
    __slots__ = ("job_id", "attempt", "lease_token", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    lease_token: str
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., lease_token: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReleaseJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents", "next_page_token")
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[Agent]
    next_page_token: str
    def __init__(self, agents: _Optional[_Iterable[_Union[Agent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DrainAgentRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class DrainAgentResponse(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: Agent
    def __init__(self, agent: _Optional[_Union[Agent, _Mapping]] = ...) -> None: ...
