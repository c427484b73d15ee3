import json

from django.core.management.base import BaseCommand, CommandError, CommandParser

from subscriptions.clients import ClientError, create_api_client


class Command(BaseCommand):
    help = "Create an OAuth2 API client (client credentials grant) and print its credentials as JSON."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--tenant", help="tenant slug; created if it does not exist; omit for a platform client")
        parser.add_argument("--scopes", help="space-separated scopes (default: all five)")

    def handle(self, *args, name: str, tenant: str | None, scopes: str | None, **options) -> None:
        try:
            new = create_api_client(name, tenant, scopes.split() if scopes is not None else None)
        except ClientError as exc:
            raise CommandError(str(exc)) from None
        output = {
            "client_id": new.client.application.client_id,
            "client_secret": new.client_secret,
            "tenant": new.client.tenant.slug if new.client.tenant else None,
            "scopes": new.client.scope_list,
        }
        self.stdout.write(json.dumps(output))
