"""atf-es: an asynchronous task framework, event-sourced on Kafka."""
