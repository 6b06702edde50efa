"""Course-code names for `needle.apps` in a checkout (``from apps.models import ResNet9``)."""
