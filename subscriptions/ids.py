import secrets


def make_id(prefix: str) -> str:
    """An opaque, unguessable id such as ``sub_3f9c...``: the prefix tells an operator what it names."""
    return f"{prefix}_{secrets.token_hex(12)}"


def new_tenant_id() -> str:
    return make_id("ten")


def new_subscription_id() -> str:
    return make_id("sub")
