"""Operator account management."""

from __future__ import annotations

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select

from stalwart.api.schemas import AccountCreate, Email
from stalwart.credentials import Passwords
from stalwart.data.engine import Database
from stalwart.data.models import Account
from stalwart.ops.audit import record
from stalwart.settings import Settings

__all__ = ["PasswordNeeded", "create_or_promote_admin"]


class PasswordNeeded(Exception):
    """No account has this email, and creating one needs a password."""


async def create_or_promote_admin(
    settings: Settings, email: str, display_name: str, password: str | None
) -> tuple[str, bool]:
    """Create an admin account, or give the admin role to the account with this email.

    An existing account keeps its password and display name: promoting it changes its role
    only (`password` may be None). Creating one validates all three as registration does.
    """
    try:
        address = TypeAdapter(Email).validate_python(email)
    except ValidationError:
        raise ValueError("invalid email") from None
    db = Database(settings)
    await db.start()
    try:
        async with db.session() as session:
            account = await session.scalar(select(Account).where(Account.email == address.lower()))
            created = account is None
            if account is None:
                if password is None:
                    raise PasswordNeeded
                try:
                    body = TypeAdapter(AccountCreate).validate_python(
                        {"email": address, "password": password, "display_name": display_name}
                    )
                except ValidationError as exc:
                    fields = ", ".join(str(e["loc"][0]) for e in exc.errors())
                    raise ValueError(f"invalid {fields}") from None
                account = Account(
                    email=body.email.lower(),
                    password_hash=await Passwords(settings).hash(body.password),
                    display_name=body.display_name,
                    role="admin",
                )
                session.add(account)
            else:
                account.role = "admin"
            await session.flush()
            record(session, "admin.granted", subject=account.id, actor="cli")
            await session.commit()
            return account.id, created
    finally:
        await db.close()
