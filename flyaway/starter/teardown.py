"""``flyaway teardown --dry-run``: exactly what the teardown stage would destroy, read from the Fly API."""

from __future__ import annotations

from flyaway.activities.fly.teardown import read_inventory
from flyaway.models.plan import MigrationPlan
from flyaway.models.teardown import TeardownInventory, TeardownStage
from flyaway.providers.fly.client import FlyClient


def _gate(plan: MigrationPlan, stage: TeardownStage) -> str:
    traffic = ("the canary stage finished with 100% on the new side" if plan.canary is not None
               else "(no canary stage: no_traffic_stage_ok)")
    approval = (f"`flyaway approve {plan.name} teardown`" if stage.approval_required
                else "no approval (approval_required: false)")
    return f"runs after the weights manifest is verified, {traffic}, and {approval}"


def describe_inventory(plan: MigrationPlan, stage: TeardownStage, inventory: TeardownInventory) -> list[str]:
    """The teardown's steps with every Machine, volume and IP it would act on."""
    lines = [f"teardown of Fly app '{stage.app}' (dry run: nothing was changed)", f"gate: {_gate(plan, stage)}",
             f"1. cordon, stop and destroy {len(inventory.machines)} machines:"]
    lines += [f"   - {m.id} {m.name} ({m.state}, {m.region}) {m.image}" for m in inventory.machines]
    after = "then delete them once their snapshots are listed" if stage.delete_volumes else "and keep them"
    lines.append(f"2. snapshot {len(inventory.volumes)} volumes, {after}:")
    lines += [f"   - {v.id} {v.name} ({v.size_gb} GB, {v.region}"
              f"{f', attached to {v.attached_machine_id}' if v.attached_machine_id else ''})" for v in inventory.volumes]
    lines.append(f"3. release {len(inventory.public_ips)} public IPs:")
    lines += [f"   - {ip}" for ip in inventory.public_ips]
    lines.append(f"4. delete the app '{stage.app}'; Fly deletes its volumes and their snapshots with it"
                 if stage.delete_app else f"4. keep the app '{stage.app}'")
    return lines


def describe_teardown(plan: MigrationPlan) -> list[str]:
    """Read the app named by the plan's teardown section and describe what would go."""
    stage = plan.teardown
    assert stage is not None
    with FlyClient(stage.app) as client:
        client.get_app()
        return describe_inventory(plan, stage, read_inventory(client))
