// Generated from protocol/schema.json by scripts/gen-types.mjs: do not edit.
export const PROTOCOL_VERSION = 1;
export const CLOSE_CODES = {
    "1000": {
        "meaning": "normal closure",
        "name": "normal",
        "reconnect": false
    },
    "1001": {
        "meaning": "server going away",
        "name": "going_away",
        "reconnect": true
    },
    "1007": {
        "meaning": "frame was not valid UTF-8 text",
        "name": "invalid_payload",
        "reconnect": false
    },
    "1008": {
        "meaning": "policy violation",
        "name": "policy_violation",
        "reconnect": false
    },
    "1009": {
        "meaning": "frame larger than max_frame_bytes",
        "name": "message_too_big",
        "reconnect": true
    },
    "1011": {
        "meaning": "internal server error",
        "name": "internal_error",
        "reconnect": true
    },
    "1012": {
        "meaning": "replica restarting; resume elsewhere",
        "name": "service_restart",
        "reconnect": true
    },
    "1013": {
        "meaning": "overloaded; back off and resume",
        "name": "try_again_later",
        "reconnect": true
    },
    "4000": {
        "meaning": "slow consumer; resume with after_seq",
        "name": "slow_consumer",
        "reconnect": true
    },
    "4001": {
        "meaning": "no frame for two heartbeats",
        "name": "idle_timeout",
        "reconnect": true
    },
    "4002": {
        "meaning": "no hello in time",
        "name": "hello_timeout",
        "reconnect": true
    },
    "4003": {
        "meaning": "events lost; rejoin with after_seq",
        "name": "resume_required",
        "reconnect": true
    },
    "4004": {
        "meaning": "too many frames; reconnect after retry_after_ms (in the reason)",
        "name": "flooding",
        "reconnect": true
    },
    "4005": {
        "meaning": "too many open connections for this user; reconnect after retry_after_ms (in the reason)",
        "name": "too_many_connections",
        "reconnect": true
    },
    "4400": {
        "meaning": "protocol violation",
        "name": "protocol_violation",
        "reconnect": false
    },
    "4401": {
        "meaning": "unauthorized; get a new token first",
        "name": "unauthorized",
        "reconnect": false
    }
};
