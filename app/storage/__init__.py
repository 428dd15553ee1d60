"""Image storage: ``local`` (files served by the API) and ``supabase`` (Storage REST API)."""
