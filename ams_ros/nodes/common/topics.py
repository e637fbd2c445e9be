"""Topic and service names, relative to the robot's namespace (the server prefixes /<device_id>/).

The robot's nodes run under ``/<device_id>`` and use these names as they are; the base station
serves several robots and addresses each as ``f"/{device_id}/{NAME}"``.
"""

IMAGE = "image_raw"
LABELS = "segmentation/labels"
MASK_COLOR = "segmentation/mask_color"
OVERLAY = "segmentation/overlay"
LABEL_INFO = "segmentation/label_info"
FRAME_BATCH = "ams/frame_batch"
MODEL_UPDATE = "ams/model_update"
SAMPLING_COMMAND = "ams/sampling_command"
EDGE_STATUS = "ams/edge_status"
SERVER_STATUS = "ams/server_status"
SNAPSHOT_SERVICE = "ams/get_model_snapshot"
ROLLBACK_SERVICE = "ams/rollback_model"  # (issue #29) an operator's rollback of one robot's model
DIAGNOSTICS = "/diagnostics"


def for_device(device_id: str, name: str) -> str:
    """The absolute name of robot ``device_id``'s topic ``name`` (as the base station sees it)."""
    return f"/{device_id.strip('/')}/{name}"
