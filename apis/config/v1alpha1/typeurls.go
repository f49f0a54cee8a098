package configv1alpha1

// Type URLs of the resource types, as used in xDS requests and responses.
const (
	TypeWorkload       = "type.googleapis.com/ambit.config.v1alpha1.Workload"
	TypeService        = "type.googleapis.com/ambit.config.v1alpha1.Service"
	TypeAuthorization  = "type.googleapis.com/ambit.config.v1alpha1.Authorization"
	TypeWaypointConfig = "type.googleapis.com/ambit.config.v1alpha1.WaypointConfig"
)
